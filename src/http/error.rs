//! One error type for every route, answered as `application/problem+json` (RFC 9457) with a
//! stable shape: `type`, `title`, `status`, `detail`, and `errors` for field problems.
//! Internal errors are logged and hidden from the client.

use axum::{
    Json,
    extract::{FromRequest, Request, rejection::BytesRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Serialize, de::DeserializeOwned};
use utoipa::ToSchema;

use crate::queue::{
    FieldError,
    store::{OpError, StoreError},
};

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Validation(Vec<FieldError>),
    Unauthorized,
    Forbidden,
    NotFound(String),
    Conflict(String),
    PayloadTooLarge,
    MethodNotAllowed,
    UnsupportedMediaType(String),
    /// A service offsite depends on (Dropbox) could not be reached or failed.
    BadGateway(String),
    Internal(String),
}

/// RFC 9457 problem details.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem; stable, compare on it.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// For validation problems: each field and what is wrong with it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            ApiError::Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid input",
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
            ),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::BadGateway(_) => (
                StatusCode::BAD_GATEWAY,
                "bad-gateway",
                "An upstream service failed",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    /// The problem for an error answer the framework made (a rejection's text, or nothing).
    pub(crate) fn from_status(status: StatusCode, text: String) -> ApiError {
        let text = if text.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("request refused")
                .to_string()
        } else {
            text
        };
        match status {
            StatusCode::NOT_FOUND => ApiError::NotFound(text),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(text),
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized,
            StatusCode::FORBIDDEN => ApiError::Forbidden,
            StatusCode::CONFLICT => ApiError::Conflict(text),
            StatusCode::UNPROCESSABLE_ENTITY => {
                ApiError::Validation(vec![FieldError::new("body", text)])
            }
            s if s.is_server_error() => ApiError::Internal(text),
            // Every other refusal of the request's shape is a bad request.
            _ => ApiError::BadRequest(text),
        }
    }

    pub fn problem(&self) -> Problem {
        let (status, slug, title) = self.parts();
        let (detail, errors) = match self {
            ApiError::BadRequest(d)
            | ApiError::NotFound(d)
            | ApiError::Conflict(d)
            | ApiError::UnsupportedMediaType(d)
            | ApiError::BadGateway(d) => (d.clone(), Vec::new()),
            ApiError::MethodNotAllowed => (
                "this route does not take that method; `Allow` lists the ones it takes".into(),
                Vec::new(),
            ),
            ApiError::Validation(errors) => (
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
                errors.clone(),
            ),
            ApiError::Unauthorized => (
                "send the API token as `Authorization: Bearer <token>`".to_string(),
                Vec::new(),
            ),
            ApiError::PayloadTooLarge => {
                ("the request body is larger than 1 MiB".into(), Vec::new())
            }
            ApiError::Forbidden => ("this address may not use the API".into(), Vec::new()),
            ApiError::Internal(_) => (
                "the server failed to handle the request; see the offsite log".into(),
                Vec::new(),
            ),
        };
        Problem {
            kind: format!("urn:offsite:problem:{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail: crate::redact::redact(&detail).into_owned(),
            errors,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(e) = &self {
            tracing::error!(error = %e, "API request failed");
        }
        let problem = self.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if matches!(self, ApiError::Unauthorized) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::NotFound(_) => ApiError::NotFound(e.to_string()),
            OpError::Conflict(m) => ApiError::Conflict(m),
            OpError::Store(s) => s.into(),
        }
    }
}

impl From<crate::ops::OpsError> for ApiError {
    fn from(e: crate::ops::OpsError) -> Self {
        use crate::ops::OpsError;
        match e {
            OpsError::NotFound(m) => ApiError::NotFound(m),
            OpsError::Conflict(m) => ApiError::Conflict(m),
            OpsError::Validation(f) => ApiError::Validation(f),
            OpsError::BadGateway(m) => ApiError::BadGateway(m),
            OpsError::Internal(m) => ApiError::Internal(m),
            OpsError::Store(s) => s.into(),
        }
    }
}

/// A JSON body whose errors are problems: malformed JSON is 400, a body of the wrong shape is
/// 422 naming the field.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| match e {
                BytesRejection::FailedToBufferBody(_) => ApiError::PayloadTooLarge,
                other => ApiError::BadRequest(other.body_text()),
            })?;
        if bytes.is_empty() {
            return from_bytes(b"{}");
        }
        if !content_type.starts_with("application/json") {
            return Err(ApiError::BadRequest(
                "send the body as JSON with `Content-Type: application/json`".into(),
            ));
        }
        from_bytes(&bytes)
    }
}

fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<ApiJson<T>, ApiError> {
    // Two steps, so that what is not JSON (anything after the value included) is a 400 and
    // JSON of the wrong shape, however it is wrong, is a 422 naming the field.
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    // Every body is an object (serde would also read a struct from an array).
    if !value.is_object() {
        return Err(ApiError::Validation(vec![FieldError::new(
            "body",
            "must be a JSON object",
        )]));
    }
    serde_path_to_error::deserialize(value)
        .map(ApiJson)
        .map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "body".to_string()
            } else {
                path
            };
            ApiError::Validation(vec![FieldError::new(field, e.into_inner().to_string())])
        })
}
