//! The HTTP API under `/api/v1` (axum + utoipa), its OpenAPI description and explorer, and
//! Prometheus metrics at `/metrics`.

pub(crate) mod auth;
pub mod error;
pub mod health;
pub mod jobs;
pub mod queues;
pub mod schedules;
pub mod snapshots;

use std::sync::Arc;

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderValue, header},
    middleware::{self, Next},
    response::Response,
};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_swagger_ui::SwaggerUi;

use crate::{
    config::Config,
    metrics::Metrics,
    queue::{Registry, Store, executor::Executor},
};
use error::ApiError;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub executor: Executor,
    pub metrics: Metrics,
    pub config: Arc<Config>,
    pub instance_id: String,
    pub services: Arc<crate::jobs::services::Services>,
    /// Dropbox authorizations started from the API or panel, waiting for their code.
    pub auth: snapshots::PendingAuth,
    /// Signs the panel's session and CSRF cookies.
    pub panel_key: crate::web::SharedPanelKey,
    /// The one-time code of the sign-in link in the start-up log.
    pub sign_in: Arc<auth::SignInCode>,
}

impl AppState {
    /// Tell this process's workers that something may be runnable now.
    pub fn nudge(&self) {
        self.executor.wake();
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// What every route can answer besides what its own attribute lists, said once: errors are
/// `application/problem+json`; every route behind the token can answer 401; a route with
/// parameters or a body can refuse them (400), one with a path parameter can find nothing
/// (404), one with a body can get too much (413) or the wrong shape (422). And `POST /jobs`
/// takes one of the documented kinds with that kind's args.
struct Contract;

impl Modify for Contract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut doc = serde_json::to_value(&*openapi).expect("OpenAPI serializes");
        let problem = |description: &str| {
            serde_json::json!({
                "description": description,
                "content": {"application/problem+json": {
                    "schema": {"$ref": "#/components/schemas/Problem"}}}
            })
        };
        if let Some(paths) = doc["paths"].as_object_mut() {
            for (path, item) in paths.iter_mut() {
                let Some(item) = item.as_object_mut() else {
                    continue;
                };
                for op in item.values_mut() {
                    let has_params = op["parameters"].as_array().is_some_and(|p| !p.is_empty());
                    let has_path_param = op["parameters"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|p| p["in"] == "path"));
                    let has_body = op.get("requestBody").is_some();
                    let Some(responses) = op["responses"].as_object_mut() else {
                        continue;
                    };
                    // Error answers with a problem body (health's 503 answers its own Health).
                    for (status, r) in responses.iter_mut() {
                        if status.as_str() >= "400"
                            && let Some(content) = r["content"].as_object_mut()
                            && content["application/json"]["schema"]["$ref"]
                                == "#/components/schemas/Problem"
                            && let Some(json) = content.remove("application/json")
                        {
                            content.insert("application/problem+json".into(), json);
                        }
                    }
                    let mut add = |status: &str, description: &str| {
                        responses
                            .entry(status.to_string())
                            .or_insert_with(|| problem(description));
                    };
                    if path != "/api/v1/health" {
                        add("401", "The API token is missing or wrong");
                    }
                    if has_params || has_body {
                        add("400", "A parameter or the body could not be read");
                    }
                    if has_path_param {
                        add("404", "Not found");
                    }
                    if has_body {
                        add("413", "The body is larger than 1 MiB");
                        add("422", "A field is invalid; `errors` names each");
                    }
                }
            }
        }
        // A body whose every field is optional may be left out (an empty body reads as `{}`).
        let optional_body = |doc: &serde_json::Value, op: &serde_json::Value| {
            let Some(name) = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .and_then(|r| r.rsplit('/').next())
            else {
                return false;
            };
            doc["components"]["schemas"][name]["required"]
                .as_array()
                .is_none_or(|r| r.is_empty())
        };
        let paths: Vec<(String, String)> = doc["paths"]
            .as_object()
            .into_iter()
            .flat_map(|p| {
                p.iter().flat_map(|(path, item)| {
                    item.as_object()
                        .into_iter()
                        .flat_map(|ops| ops.keys().map(|m| (path.clone(), m.clone())))
                })
            })
            .collect();
        for (path, method) in paths {
            if optional_body(&doc, &doc["paths"][&path][&method]) {
                doc["paths"][&path][&method]["requestBody"]["required"] = false.into();
            }
        }
        // The list's `state` filter: states separated by commas.
        if let Some(params) = doc["paths"]["/api/v1/jobs"]["get"]["parameters"].as_array_mut() {
            for p in params.iter_mut().filter(|p| p["name"] == "state") {
                p["schema"]["pattern"] = jobs::state_list_pattern().into();
            }
        }
        // Bulk retry never takes running jobs (they are cancelled first).
        let retryable: Vec<&str> = crate::queue::JobState::ALL
            .into_iter()
            .filter(|s| *s != crate::queue::JobState::Running)
            .map(crate::queue::JobState::as_str)
            .collect();
        doc["components"]["schemas"]["BulkRetryBody"]["properties"]["states"]["items"] =
            serde_json::json!({"type": "string", "enum": retryable});
        // POST /jobs: one object per documented kind, `kind` fixed, `args` that kind's schema.
        let schemas = &mut doc["components"]["schemas"];
        let body = schemas["EnqueueBody"].clone();
        let variants: Vec<serde_json::Value> = jobs::documented_kinds()
            .into_iter()
            .map(|(kind, args)| {
                let mut v = body.clone();
                v["title"] = kind.into();
                v["properties"]["kind"] = serde_json::json!({"type": "string", "enum": [kind]});
                let description = v["properties"]["args"]["description"].clone();
                v["properties"]["args"] = serde_json::json!({
                    "allOf": [{"$ref": format!("#/components/schemas/{args}")}],
                    "description": description,
                });
                // `args` may be left out when the kind needs none of its fields.
                let needs_args = schemas[args]["required"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty());
                if needs_args && let Some(required) = v["required"].as_array_mut() {
                    required.push("args".into());
                }
                v
            })
            .collect();
        schemas["EnqueueBody"] = serde_json::json!({
            "description": body["description"],
            "oneOf": variants,
        });
        *openapi = serde_json::from_value(doc).expect("the modified OpenAPI reads back");
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "offsite",
        description = "Durable job queue that gets backups off the premises. Submit jobs, \
            inspect the queue, retry or cancel jobs, pause queues and run schedules. Send the API \
            token (`api.token`, else the one offsite keeps in `<data_dir>/api-token`) as \
            `Authorization: Bearer <token>`. Every error is `application/problem+json`."
    ),
    paths(
        jobs::enqueue, jobs::list, jobs::show, jobs::retry, jobs::cancel, jobs::delete,
        jobs::bulk_retry, queues::list, queues::pause, queues::resume, schedules::list,
        schedules::run, health::health, snapshots::uploads, snapshots::run,
        snapshots::destinations, snapshots::authorize, snapshots::authorize_code
    ),
    components(schemas(
        crate::jobs::noop::NoopArgs,
        crate::jobs::snapshot::SnapshotScanArgs,
        crate::jobs::snapshot::SnapshotUploadArgs,
        crate::jobs::retention::RetentionPruneArgs
    )),
    modifiers(&BearerAuth, &Contract),
    security(("bearer" = [])),
    tags(
        (name = "jobs", description = "Submit and manage jobs"),
        (name = "queues", description = "Queue counts, pause and resume"),
        (name = "schedules", description = "Schedules and running them on demand"),
        (name = "backups", description = "Uploaded backups, back up now, destinations and their authorization"),
        (name = "system", description = "Health")
    )
)]
pub struct ApiDoc;

/// The OpenAPI document as committed in `openapi/openapi.json`.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("OpenAPI serializes")
        + "\n"
}

pub(crate) use auth::{bearer_matches, ct_eq};

/// Every route but health, the API description and the panel (which checks access itself)
/// needs the token, unless [`auth::trusted_without_token`] says the caller may go without.
async fn require_token(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let path = req.uri().path();
    // /callback is reached by the browser coming back from Dropbox; its `state` guards it.
    let open = path == "/api/v1/health"
        || path == "/api/v1/openapi.json"
        || path.starts_with("/api/docs")
        || path == "/callback"
        || crate::web::is_panel_path(path);
    let allowed = open
        || auth::trusted_without_token(&state.config, &peer, req.headers())
        || state
            .config
            .api
            .token
            .as_ref()
            .is_some_and(|t| bearer_matches(req.headers(), t));
    if !allowed {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(req).await)
}

/// With `api.allow_from`, only those clients get an answer at all.
async fn restrict_clients(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let allowed = &state.config.api.allow_from;
    let ip = peer.ip().to_canonical();
    if allowed.is_empty() || allowed.iter().any(|a| a.to_canonical() == ip) {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::Forbidden)
    }
}

async fn fallback() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The panel's policy: nothing from elsewhere, no inline script.
const PANEL_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'self'; \
    base-uri 'none'";
/// The API explorer's: the same, but Swagger UI sets inline styles. `connect-src` and
/// `img-src` keep it offline even if a setting would make it call out.
const EXPLORER_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' \
    'unsafe-inline'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'self'; base-uri 'none'";

/// One place for the headers every answer carries, and the policy every HTML page carries —
/// the panel, the explorer, `/callback` and every error page alike.
async fn security_headers(req: Request, next: Next) -> Response {
    let explorer = req.uri().path().starts_with("/api/docs");
    let mut resp = next.run(req).await;
    let html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/html"));
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if html {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(if explorer { EXPLORER_CSP } else { PANEL_CSP }),
        );
        h.entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
    }
    resp
}

/// The framework's own refusals (a query, path or form that does not parse, a wrong method, a
/// wrong content type) come as plain text or with no body; they leave as
/// `application/problem+json` like every error of ours. The panel's own HTML error pages stay
/// pages.
async fn problems_only(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    // The framework's refusals are plain text or empty; a body a handler chose (a problem,
    // a panel page, health's own JSON) stays as it is.
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !(ct.is_empty() || ct.starts_with("text/plain")) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let mut out =
        axum::response::IntoResponse::into_response(ApiError::from_status(parts.status, text));
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        out.headers_mut().insert(header::ALLOW, allow.clone());
    }
    out
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(jobs::router())
        .merge(queues::router())
        .merge(schedules::router())
        .merge(snapshots::router())
        .merge(health::router());
    Router::new()
        .nest("/api/v1", api)
        .merge(health::metrics_router())
        .route("/callback", axum::routing::get(snapshots::callback))
        .merge(crate::web::router(state.clone()))
        .merge(
            SwaggerUi::new("/api/docs")
                .url("/api/v1/openapi.json", ApiDoc::openapi())
                // Offline: no spec validation by validator.swagger.io.
                .config(utoipa_swagger_ui::Config::default().validator_url("none")),
        )
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            restrict_clients,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .layer(middleware::from_fn(problems_only))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}
