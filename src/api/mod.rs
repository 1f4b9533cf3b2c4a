//! The HTTP API under `/api/v1` (axum + utoipa), its OpenAPI description and explorer, and
//! Prometheus metrics at `/metrics`.

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
    http::header,
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

#[derive(OpenApi)]
#[openapi(
    info(
        title = "offsite",
        description = "Durable job queue that gets backups off the premises. Submit jobs, \
            inspect the queue, retry or cancel jobs, pause queues and run schedules. When the \
            server is configured with `api.token`, send it as `Authorization: Bearer <token>`."
    ),
    paths(
        jobs::enqueue, jobs::list, jobs::show, jobs::retry, jobs::cancel, jobs::delete,
        jobs::bulk_retry, queues::list, queues::pause, queues::resume, schedules::list,
        schedules::run, health::health, snapshots::uploads, snapshots::run,
        snapshots::destinations, snapshots::authorize, snapshots::authorize_code
    ),
    modifiers(&BearerAuth),
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

pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request carries `Authorization: Bearer <token>` (compared in constant time).
pub(crate) fn bearer_matches(headers: &header::HeaderMap, token: &crate::config::Secret) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    ct_eq(given.as_bytes(), token.expose().as_bytes())
}

/// With a token configured, every route but health and the API description needs it.
async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(token) = &state.config.api.token else {
        return Ok(next.run(req).await);
    };
    let path = req.uri().path();
    // /callback is reached by the browser coming back from Dropbox; its `state` guards it.
    let open = path == "/api/v1/health"
        || path == "/api/v1/openapi.json"
        || path.starts_with("/api/docs")
        || path == "/callback"
        // The panel checks access itself (ingress, loopback, or a signed-in session).
        || crate::web::is_panel_path(path);
    if !open && !bearer_matches(req.headers(), token) {
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
        .merge(SwaggerUi::new("/api/docs").url("/api/v1/openapi.json", ApiDoc::openapi()))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            restrict_clients,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .with_state(state)
}
