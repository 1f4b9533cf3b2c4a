//! What the HTTP side (the API, the panel, the metrics) shares: the state handlers get, the
//! problem answers, who may ask, and the policy every answer gets.

pub(crate) mod auth;
pub mod error;

use std::{path::Path as FsPath, sync::Arc};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, header},
    middleware::{self, Next},
    response::Response,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{
    config::Config,
    queue::{Registry, Store, executor::Executor},
};
pub(crate) use auth::{bearer_matches, ct_eq};
use error::ApiError;

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub executor: Executor,
    pub config: Arc<Config>,
    pub instance_id: String,
    pub services: Arc<crate::jobs::services::Services>,
    /// Dropbox authorizations started from the API or panel, waiting for their code.
    pub auth: crate::ops::PendingAuth,
    /// Signs the panel's session and CSRF cookies.
    pub panel_key: SharedPanelKey,
    /// The one-time code of the sign-in link in the start-up log.
    pub sign_in: Arc<auth::SignInCode>,
}

impl AppState {
    /// Tell this process's workers that something may be runnable now.
    pub fn nudge(&self) {
        self.executor.wake();
    }
}

/// The panel's signing key: kept in the data directory so sessions and open pages survive a
/// restart.
pub struct PanelKey([u8; 32]);

impl PanelKey {
    pub fn load_or_create(data_dir: &FsPath) -> std::io::Result<PanelKey> {
        let path = data_dir.join("panel.key");
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
        {
            return Ok(PanelKey(key));
        }
        let key: [u8; 32] = rand::random();
        let tmp = path.with_extension("key.tmp");
        {
            use std::io::Write;
            let mut opts = std::fs::File::options();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(&key)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        Ok(PanelKey(key))
    }

    #[cfg(test)]
    pub(crate) fn ephemeral() -> PanelKey {
        PanelKey(rand::random())
    }

    pub(crate) fn sign(&self, what: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        mac.update(what.as_bytes());
        hex(&mac.finalize().into_bytes())
    }
}

pub(crate) use crate::transfer::hex;

/// The path prefix every link and form must carry: Home Assistant's `X-Ingress-Path`, or
/// nothing. Anything that is not a plain path is ignored rather than echoed into the page.
pub(crate) fn ingress_prefix(headers: &HeaderMap) -> String {
    let Some(p) = headers.get("x-ingress-path").and_then(|v| v.to_str().ok()) else {
        return String::new();
    };
    let ok = p.starts_with('/')
        && !p.contains("//")
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'.'));
    if ok {
        p.trim_end_matches('/').to_string()
    } else {
        String::new()
    }
}

/// Whether a path belongs to the panel (which guards itself).
pub fn is_panel_path(path: &str) -> bool {
    path == "/" || path.starts_with("/panel/")
}

/// Shared so `AppState` stays cheap to clone.
pub type SharedPanelKey = Arc<PanelKey>;

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
        || is_panel_path(path);
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

/// The routes of `routes` with what every answer gets: `api.allow_from`, the token check (but
/// for health, the API description, the panel and `/callback`), problems for the framework's
/// refusals, the security headers, a 1 MiB body limit.
pub fn serve(state: AppState, routes: Router<AppState>) -> Router {
    routes
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

/// A download of `file` as it is stored (a name a device's index lists).
pub fn attachment(file: &str, bytes: Vec<u8>) -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/octet-stream".to_string(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", file.replace(['"', '\\'], "")),
            ),
        ],
        axum::body::Body::from(bytes),
    )
        .into_response()
}
