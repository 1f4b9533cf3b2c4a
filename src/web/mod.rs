//! The panel: server-rendered pages for the Home Assistant sidebar (through ingress) and for a
//! browser on the same machine standalone. A little JavaScript refreshes the live parts; every
//! action is a plain form POST that redirects back (so a reload never repeats it).
//!
//! Who gets in: in add-on mode `api.allow_from` already limits the port to Home Assistant's
//! ingress proxy, which has authenticated the user. Standalone, everyone signs in with the API
//! token (the sign-in link in the start-up log, or the sign-in form), which sets a session
//! cookie; a browser on this machine goes without only when `api.trust_loopback` is set,
//! since a reverse proxy on this machine makes everyone a loopback client. Forms carry a CSRF
//! token bound to a signed cookie.

pub(crate) mod page;

use std::net::SocketAddr;

use axum::{
    Form, Router,
    extract::{ConnectInfo, Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{Html, IntoResponse, Json, Redirect, Response},
    routing::{get, post},
};
use serde::Deserialize;

use crate::{
    http::{AppState, error::ApiError, hex, ingress_prefix},
    ops,
};

const CSRF_COOKIE: &str = "offsite_csrf";
const SESSION_COOKIE: &str = "offsite_session";

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(prefix: &str, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let path = if prefix.is_empty() { "/" } else { prefix };
    let age = max_age
        .map(|a| format!("; Max-Age={a}"))
        .unwrap_or_default();
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; HttpOnly; SameSite=Strict{age}"
    ))
    .expect("cookie is ASCII")
}

/// The session cookie's value: an HMAC of the token, so changing the token signs everyone out.
fn session_value(state: &AppState, token: &crate::config::Secret) -> String {
    state.panel_key.sign(&format!("session:{}", token.expose()))
}

/// Whether this request may use the panel: Home Assistant's ingress or (when configured) a
/// browser on this machine without signing in ([`crate::http::auth::trusted_without_token`]);
/// anyone else with the API token — the session cookie from signing in, or a bearer header.
fn trusted(state: &AppState, peer: &SocketAddr, headers: &HeaderMap) -> bool {
    if crate::http::auth::trusted_without_token(&state.config, peer, headers) {
        return true;
    }
    let Some(token) = &state.config.api.token else {
        return false;
    };
    let session = session_value(state, token);
    cookie(headers, SESSION_COOKIE)
        .is_some_and(|given| crate::http::ct_eq(given.as_bytes(), session.as_bytes()))
        || crate::http::bearer_matches(headers, token)
}

/// `?token=` on a panel page: the one-time code of the sign-in link from the start-up log, or
/// the API token.
#[derive(Debug, Deserialize)]
struct LinkToken {
    token: Option<String>,
}

async fn guard(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let prefix = ingress_prefix(req.headers());
    // The sign-in link: the right token sets the session cookie and sends the browser to the
    // same page without the token in its address bar and history.
    if req.method() == axum::http::Method::GET
        && let Ok(Query(LinkToken { token: Some(given) })) =
            Query::<LinkToken>::try_from_uri(req.uri())
    {
        let Some(token) = state.config.api.token.as_ref().filter(|t| {
            state.sign_in.redeem(&given)
                || crate::http::ct_eq(given.as_bytes(), t.expose().as_bytes())
        }) else {
            tracing::warn!("panel sign-in link with a wrong token");
            return Redirect::to(&format!("{prefix}/panel/login")).into_response();
        };
        let mut resp = Redirect::to(&format!("{prefix}{}", req.uri().path())).into_response();
        resp.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(
                &prefix,
                SESSION_COOKIE,
                &session_value(&state, token),
                Some(30 * 24 * 3600),
            ),
        );
        return resp;
    }
    if trusted(&state, &peer, req.headers()) {
        return next.run(req).await;
    }
    if req.method() == axum::http::Method::GET && req.uri().path() == "/" {
        return Redirect::to(&format!("{prefix}/panel/login")).into_response();
    }
    page_error(
        &prefix,
        StatusCode::UNAUTHORIZED,
        "Sign in first",
        "This page needs the API token.",
    )
}

/// A whole page that only says what went wrong (never internals).
fn page_error(prefix: &str, status: StatusCode, title: &str, text: &str) -> Response {
    (status, Html(page::message_page(prefix, title, text))).into_response()
}

/// Sets the CSRF cookie on a page when `csrf_token` made a new one.
fn with_csrf_cookie(mut resp: Response, prefix: &str, csrf: &str, fresh: bool) -> Response {
    if fresh {
        resp.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(prefix, CSRF_COOKIE, csrf, None),
        );
    }
    resp
}

/// The CSRF token for this browser: the signed cookie it has, or a new one to set.
fn csrf_token(state: &AppState, headers: &HeaderMap) -> (String, bool) {
    if let Some(v) = cookie(headers, CSRF_COOKIE)
        && valid_csrf(state, v)
    {
        return (v.to_string(), false);
    }
    let nonce = hex(&rand::random::<[u8; 16]>());
    let sig = state.panel_key.sign(&format!("csrf:{nonce}"));
    (format!("{nonce}.{sig}"), true)
}

fn valid_csrf(state: &AppState, value: &str) -> bool {
    let Some((nonce, sig)) = value.split_once('.') else {
        return false;
    };
    let expected = state.panel_key.sign(&format!("csrf:{nonce}"));
    crate::http::ct_eq(sig.as_bytes(), expected.as_bytes())
}

/// A form is accepted only from our own pages: the field must match the signed cookie, and a
/// browser that says the request is cross-site is refused outright.
fn csrf_rejection(state: &AppState, headers: &HeaderMap, field: &str) -> Option<Response> {
    let prefix = ingress_prefix(headers);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let cross_site = match header("sec-fetch-site") {
        Some(site) => site == "cross-site" || site == "same-site",
        // Older browsers: fall back to comparing Origin with the host asked for (behind a
        // proxy, the host the proxy was asked for). A request with neither header did not come
        // from a browser showing our page (every browser sends Origin on a form POST).
        None => header("origin").is_none_or(|origin| {
            let forwarded = header("x-forwarded-host").and_then(|h| h.split(',').next());
            let host = forwarded.or(header("host")).unwrap_or("").trim();
            url::Url::parse(origin).ok().is_none_or(|o| {
                let authority = match (o.host_str(), o.port()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    (Some(h), None) => h.to_string(),
                    _ => String::new(),
                };
                !authority.eq_ignore_ascii_case(host)
            })
        }),
    };
    let cookie_ok = cookie(headers, CSRF_COOKIE).is_some_and(|c| {
        valid_csrf(state, c) && crate::http::ct_eq(c.as_bytes(), field.as_bytes())
    });
    if cross_site || !cookie_ok {
        return Some(page_error(
            &prefix,
            StatusCode::FORBIDDEN,
            "This form was refused",
            "The request did not come from this panel, or this browser does not keep the \
             panel's cookie. Go back, reload the page and try again.",
        ));
    }
    None
}

/// Back to the panel with a message (Post/Redirect/Get).
/// The message is signed so that a link from elsewhere cannot put words on the page.
fn back(state: &AppState, prefix: &str, kind: &str, message: &str, anchor: &str) -> Response {
    let q: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair(kind, message)
        .append_pair("sig", &flash_sig(state, kind, message))
        .finish();
    Redirect::to(&format!("{prefix}/?{q}#{anchor}")).into_response()
}

fn flash_sig(state: &AppState, kind: &str, message: &str) -> String {
    state.panel_key.sign(&format!("flash:{kind}:{message}"))[..32].to_string()
}

#[derive(Debug, Deserialize)]
pub struct Flash {
    ok: Option<String>,
    error: Option<String>,
    sig: Option<String>,
}

async fn index(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(flash): Query<Flash>,
) -> Response {
    let prefix = ingress_prefix(&headers);
    let (csrf, fresh) = csrf_token(&state, &headers);
    let data = match page::PanelData::gather(&state).await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the panel's data");
            return page_error(
                &prefix,
                StatusCode::INTERNAL_SERVER_ERROR,
                "offsite cannot read its database",
                "See the add-on log for details; reload to try again.",
            );
        }
    };
    let flash = match (flash.ok, flash.error) {
        (_, Some(e)) => Some((false, e)),
        (Some(m), None) => Some((true, m)),
        _ => None,
    }
    .filter(|(ok, text)| {
        let expected = flash_sig(&state, if *ok { "ok" } else { "error" }, text);
        flash
            .sig
            .as_deref()
            .is_some_and(|s| crate::http::ct_eq(s.as_bytes(), expected.as_bytes()))
    });
    let html = page::index(&page::Ctx::new(&state, &prefix, &csrf), &data, flash);
    let resp = Html(html).into_response();
    with_csrf_cookie(resp, &prefix, &csrf, fresh)
}

/// The live parts of the page, rendered, for the refresh script.
async fn sections(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let prefix = ingress_prefix(&headers);
    let Some(csrf) = cookie(&headers, CSRF_COOKIE).filter(|c| valid_csrf(&state, c)) else {
        // Without the cookie the forms would not work: the script reloads the page instead.
        return (StatusCode::CONFLICT, "reload").into_response();
    };
    match page::PanelData::gather(&state).await {
        Ok(data) => {
            let parts = page::sections(&page::Ctx::new(&state, &prefix, csrf), &data);
            let map: serde_json::Map<String, serde_json::Value> = parts
                .into_iter()
                .map(|(id, html)| (id.to_string(), html.into()))
                .collect();
            Json(map).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the panel's data");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn backup_now(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let prefix = ingress_prefix(&headers);
    if let Some(r) = csrf_rejection(&state, &headers, &form.csrf) {
        return r;
    }
    match ops::back_up_now(&state.store, &state.registry).await {
        Ok(_) => {
            state.nudge();
            back(
                &state,
                &prefix,
                "ok",
                "Looking for new backups now; uploads appear under Activity.",
                "activity",
            )
        }
        Err(ops::OpsError::NotFound(_)) => back(
            &state,
            &prefix,
            "error",
            "Backups are not set up: no destination is configured yet.",
            "top",
        ),
        Err(e) => back(&state, &prefix, "error", &user_message(e.into()), "top"),
    }
}

/// Dump now: the database's dump schedule, at once.
async fn dump_now(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let prefix = ingress_prefix(&headers);
    if let Some(r) = csrf_rejection(&state, &headers, &form.csrf) {
        return r;
    }
    let schedule = format!("{}{name}", crate::jobs::db_dump::SCHEDULE_PREFIX);
    let enqueued = ops::run_schedule(&state.store, &state.registry, &schedule).await;
    started(
        &state,
        &prefix,
        enqueued,
        &format!("Dumping database {name} now; the job appears under Activity."),
        ("activity", "top"),
    )
}

/// After a "… now" button: the job is enqueued (the workers are woken and the page says
/// `ok`, at `anchors.0`), or why not (at `anchors.1`).
fn started<T>(
    state: &AppState,
    prefix: &str,
    enqueued: Result<T, ops::OpsError>,
    ok: &str,
    anchors: (&str, &str),
) -> Response {
    match enqueued {
        Ok(_) => {
            state.nudge();
            back(state, prefix, "ok", ok, anchors.0)
        }
        Err(e) => back(state, prefix, "error", &user_message(e.into()), anchors.1),
    }
}

/// Fetch now: the device's schedule job, at once.
async fn device_fetch(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let prefix = ingress_prefix(&headers);
    if let Some(r) = csrf_rejection(&state, &headers, &form.csrf) {
        return r;
    }
    let enqueued =
        ops::devices::fetch_now(&state.config, &state.store, &state.registry, &name).await;
    started(
        &state,
        &prefix,
        enqueued,
        &format!("Fetching device {name} now; the job appears under Activity."),
        ("devices", "devices"),
    )
}

/// Sync now: the Google Drive source's schedule job, at once.
async fn google_sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let prefix = ingress_prefix(&headers);
    if let Some(r) = csrf_rejection(&state, &headers, &form.csrf) {
        return r;
    }
    let enqueued =
        ops::google::sync_now(&state.services, &state.store, &state.registry, &name).await;
    started(
        &state,
        &prefix,
        enqueued,
        &format!("Syncing Google Drive {name} now; the job appears under Activity."),
        ("google", "google"),
    )
}

/// Test connection: contacts the device now; what it said (or why not) is the message.
async fn device_test(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let prefix = ingress_prefix(&headers);
    if let Some(r) = csrf_rejection(&state, &headers, &form.csrf) {
        return r;
    }
    match ops::devices::test_connection(&state.config, &state.services, &name).await {
        Ok(said) => back(
            &state,
            &prefix,
            "ok",
            &format!("Device {name} answered: {said}"),
            "devices",
        ),
        Err(e) => back(
            &state,
            &prefix,
            "error",
            &format!("Test of device {name} failed: {}", user_message(e.into())),
            "devices",
        ),
    }
}

/// A stored version's file (only those the device's index lists).
async fn device_version(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, file)): Path<(String, String)>,
) -> Response {
    let prefix = ingress_prefix(&headers);
    let found = match ops::devices::configured(&state.config, &name) {
        Ok(()) => ops::devices::version_bytes(&state.config.data_dir, &name, &file).await,
        Err(e) => Err(e),
    };
    match found {
        Ok(bytes) => crate::http::attachment(&file, bytes),
        Err(e) => device_page_error(&prefix, e),
    }
}

#[derive(Debug, Deserialize)]
pub struct DiffParams {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
}

/// The readable diff of two versions (masked, escaped).
async fn device_diff(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<DiffParams>,
) -> Response {
    let prefix = ingress_prefix(&headers);
    match ops::devices::diff(&state.config, &name, &q.from, &q.to).await {
        Ok(text) => Html(page::device_diff(&prefix, &name, &q.from, &q.to, &text)).into_response(),
        Err(e) => device_page_error(&prefix, e),
    }
}

fn device_page_error(prefix: &str, e: ops::OpsError) -> Response {
    let status = match &e {
        ops::OpsError::NotFound(_) => StatusCode::NOT_FOUND,
        ops::OpsError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    page_error(prefix, status, "Not available", &user_message(e.into()))
}

async fn authorize(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let prefix = ingress_prefix(&headers);
    if let Some(r) = csrf_rejection(&state, &headers, &form.csrf) {
        return r;
    }
    let anchor = if state.services.google_drive(&name).is_some() {
        "google"
    } else {
        "destinations"
    };
    match ops::authorization::begin_authorization(&state.services, &state.auth, &name) {
        Ok(_) => Redirect::to(&format!("{prefix}/#{anchor}")).into_response(),
        Err(e) => back(
            &state,
            &prefix,
            "error",
            &user_message(e.into()),
            "destinations",
        ),
    }
}

#[derive(Debug, Deserialize)]
pub struct CodeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    code: String,
}

async fn authorize_code(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<CodeForm>,
) -> Response {
    let prefix = ingress_prefix(&headers);
    if let Some(r) = csrf_rejection(&state, &headers, &form.csrf) {
        return r;
    }
    let finished = ops::authorization::finish_authorization(
        &state.store,
        &state.services,
        &state.auth,
        &name,
        &form.code,
    )
    .await;
    let (service, who, anchor) = if state.services.google_drive(&name).is_some() {
        ("Google Drive", "Google", "google")
    } else {
        ("Dropbox destination", "Dropbox", "destinations")
    };
    match finished {
        Ok(()) => {
            state.nudge();
            back(
                &state,
                &prefix,
                "ok",
                &format!("{service} {name} is authorized; waiting jobs continue now."),
                anchor,
            )
        }
        Err(e) => back(
            &state,
            &prefix,
            "error",
            &format!("{who} did not accept the code: {}", user_message(e.into())),
            anchor,
        ),
    }
}

async fn retry(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let prefix = ingress_prefix(&headers);
    if let Some(r) = csrf_rejection(&state, &headers, &form.csrf) {
        return r;
    }
    // Only what the page offers: failed jobs (checked in the store's transaction).
    match state.store.retry_failed(id).await {
        Ok(job) => {
            state.nudge();
            back(
                &state,
                &prefix,
                "ok",
                &format!(
                    "Job {id} ({}) will run again now.",
                    state.registry.describe_job(&job)
                ),
                "activity",
            )
        }
        Err(e) => back(
            &state,
            &prefix,
            "error",
            &user_message(e.into()),
            "problems",
        ),
    }
}

/// What the user is told about a failed action: the message for things they can act on, a
/// generic line for internal faults (logged, never shown).
fn user_message(e: ApiError) -> String {
    match e {
        ApiError::Internal(detail) => {
            tracing::error!(error = %detail, "panel action failed");
            "something went wrong inside offsite; the log has the details".into()
        }
        other => {
            let p = other.problem();
            match p.errors.first() {
                Some(f) => f.message.clone(),
                None => p.detail,
            }
        }
    }
}

async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let prefix = ingress_prefix(&headers);
    let (csrf, fresh) = csrf_token(&state, &headers);
    let resp = Html(page::login(
        &prefix,
        &csrf,
        state.config.api.token.is_some(),
        None,
    ))
    .into_response();
    with_csrf_cookie(resp, &prefix, &csrf, fresh)
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    token: String,
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let prefix = ingress_prefix(&headers);
    if let Some(r) = csrf_rejection(&state, &headers, &form.csrf) {
        return r;
    }
    let token = state
        .config
        .api
        .token
        .as_ref()
        .filter(|t| crate::http::ct_eq(form.token.trim().as_bytes(), t.expose().as_bytes()));
    let Some(token) = token else {
        tracing::warn!("panel sign-in with a wrong token");
        return (
            StatusCode::UNAUTHORIZED,
            Html(page::login(
                &prefix,
                &form.csrf,
                state.config.api.token.is_some(),
                Some("That is not the API token."),
            )),
        )
            .into_response();
    };
    let session = session_value(&state, token);
    let mut resp = Redirect::to(&format!("{prefix}/")).into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&prefix, SESSION_COOKIE, &session, Some(30 * 24 * 3600)),
    );
    resp
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", include_str!("panel.css"))
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("panel.js"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// The panel's routes; `/` and `/panel/*` (the API's token check leaves them to this module).
pub fn router(state: AppState) -> Router<AppState> {
    let guarded = Router::new()
        .route("/", get(index))
        .route("/panel/sections", get(sections))
        .route("/panel/backup-now", post(backup_now))
        .route("/panel/dumps/{name}/run", post(dump_now))
        .route("/panel/devices/{name}/fetch", post(device_fetch))
        .route("/panel/google/{name}/sync", post(google_sync))
        .route("/panel/devices/{name}/test", post(device_test))
        .route("/panel/devices/{name}/versions/{file}", get(device_version))
        .route("/panel/devices/{name}/diff", get(device_diff))
        .route("/panel/destinations/{name}/authorize", post(authorize))
        .route(
            "/panel/destinations/{name}/authorize/code",
            post(authorize_code),
        )
        .route("/panel/jobs/{id}/retry", post(retry))
        .route_layer(middleware::from_fn_with_state(state, guard));
    Router::new()
        .merge(guarded)
        .route("/panel/login", get(login_page).post(login))
        .route("/panel/panel.css", get(css))
        .route("/panel/panel.js", get(js))
        .route("/callback", get(callback))
}

#[derive(Debug, Deserialize)]
pub struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The panel's message page (the callback is opened outside ingress, so no prefix).
fn callback_page(status: StatusCode, title: &str, text: &str) -> (StatusCode, Html<String>) {
    (status, Html(page::message_page("", title, text)))
}

/// Where Dropbox sends the user back in the redirect flow (a redirect URI registered with the
/// app and set as the destination's `redirect_uri`). The `state` proves the request is ours.
pub async fn callback(
    State(state): State<AppState>,
    Query(p): Query<CallbackParams>,
) -> (StatusCode, Html<String>) {
    // Anyone can make a link to this page with any text in `error_description`, so the page
    // says only what we know: access was not granted.
    if let Some(error) = p.error {
        let why = if error == "access_denied" {
            "Access was denied in Dropbox. Start the authorization again from the panel and \
             press Allow."
        } else {
            "Dropbox did not grant access. Start the authorization again from the panel."
        };
        return callback_page(
            StatusCode::BAD_REQUEST,
            "Authorization was not granted",
            why,
        );
    }
    let (Some(code), Some(nonce)) = (p.code, p.state) else {
        return callback_page(
            StatusCode::BAD_REQUEST,
            "Missing code",
            "This page is opened by Dropbox after you allow access.",
        );
    };
    let Some((name, pending)) = ops::authorization::pending_by_state(&state.auth, &nonce) else {
        return callback_page(
            StatusCode::BAD_REQUEST,
            "Unknown or expired authorization",
            "Start the authorization again.",
        );
    };
    if ops::authorization(&state.services, &name).is_err() {
        return callback_page(StatusCode::NOT_FOUND, "Unknown destination", &name);
    }
    let redirect = ops::authorization::redirect_uri(&state.services, &name);
    if let Err(e) =
        ops::authorization::exchange(&state.services, &name, &pending, &code, redirect.as_deref())
            .await
    {
        return callback_page(
            StatusCode::BAD_REQUEST,
            "Dropbox did not accept the code",
            &e.to_string(),
        );
    }
    match ops::authorization::authorized(&state.store, &state.auth, &name).await {
        Ok(_) => state.nudge(),
        Err(e) => tracing::error!(error = ?ApiError::from(e), "could not wake waiting jobs"),
    }
    callback_page(
        StatusCode::OK,
        "Dropbox is authorized",
        &format!("Destination {name} is ready; you can close this page."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::PanelKey;

    #[test]
    fn ingress_prefix_is_a_plain_path_or_nothing() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-ingress-path",
            HeaderValue::from_static("/api/hassio_ingress/abc-DEF_123/"),
        );
        assert_eq!(ingress_prefix(&h), "/api/hassio_ingress/abc-DEF_123");
        for bad in [
            "javascript:alert(1)",
            "/a\"><script>",
            "//evil.example",
            "/a?b",
        ] {
            h.insert("x-ingress-path", HeaderValue::from_str(bad).unwrap());
            assert_eq!(ingress_prefix(&h), "", "{bad}");
        }
    }

    #[test]
    fn csrf_tokens_are_signed() {
        let key = PanelKey::ephemeral();
        let a = key.sign("csrf:1");
        assert_eq!(a, key.sign("csrf:1"));
        assert_ne!(a, PanelKey::ephemeral().sign("csrf:1"));
    }
}
