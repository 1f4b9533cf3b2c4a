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
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    pub fn problem(&self) -> Problem {
        let (status, slug, title) = self.parts();
        let (detail, errors) = match self {
            ApiError::BadRequest(d) | ApiError::NotFound(d) | ApiError::Conflict(d) => {
                (d.clone(), Vec::new())
            }
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
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(de) {
        Ok(v) => Ok(ApiJson(v)),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() || inner.is_io() {
                Err(ApiError::BadRequest(format!("malformed JSON: {inner}")))
            } else {
                let field = if path == "." {
                    "body".to_string()
                } else {
                    path
                };
                Err(ApiError::Validation(vec![FieldError::new(
                    field,
                    inner.to_string(),
                )]))
            }
        }
    }
}
