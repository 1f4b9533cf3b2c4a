//! Authorizing a destination (Dropbox's OAuth with PKCE), for the API, the panel and the CLI:
//! start (a link to send the user to), finish (the pasted code or the redirect's), and waking
//! the jobs that waited for it. The only place that asks a destination whether it has an
//! authorization step.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use super::OpsError;
use crate::{
    destinations::{Authorization, auth::Pkce},
    jobs::services::Services,
    queue::{FieldError, Store, store::StoreError},
    transfer::TransferError,
};

/// The authorization step of destination `name`: NotFound when it is not configured, Conflict
/// when it needs none.
pub fn authorization<'a>(
    services: &'a Services,
    name: &str,
) -> Result<&'a dyn Authorization, OpsError> {
    // A Google Drive source is authorized like an OAuth destination.
    if !services.has_destination(name)
        && let Some(drive) = services.google_drive(name)
    {
        return Ok(&**drive as &dyn Authorization);
    }
    services
        .destination(name)
        .map_err(|_| OpsError::NotFound(format!("destination {name:?} is not configured")))?
        .authorization()
        .ok_or_else(|| OpsError::Conflict(format!("destination {name:?} needs no authorization")))
}

/// Whether destination `name` has an authorization step (the panel offers it).
pub fn authorizable(services: &Services, name: &str) -> bool {
    authorization(services, name).is_ok()
}

/// Whether destination `name` waits for the user to authorize it (Home Assistant says so).
pub fn needs_authorization(services: &Services, name: &str) -> bool {
    authorization(services, name).is_ok_and(|a| !a.is_authorized())
}

/// The redirect URI registered for `name`'s redirect flow, if it has one.
pub fn redirect_uri(services: &Services, name: &str) -> Option<String> {
    authorization(services, name)
        .ok()
        .and_then(|a| a.redirect_uri().map(str::to_owned))
}

/// An authorization started and not finished yet.
#[derive(Clone)]
pub struct Pending {
    pkce: Pkce,
    /// Where the user was sent, so the panel can offer the link again.
    pub url: String,
    /// For the redirect flow: the `state` Dropbox hands back to `/callback`.
    state: String,
}

/// Pending authorizations, by destination.
pub type PendingAuth = Arc<Mutex<HashMap<String, Pending>>>;

/// Starts an authorization of `name` without keeping it (the CLI keeps it itself): the link
/// to open, and what `finish` needs.
pub fn start(services: &Services, name: &str, redirect: Option<&str>) -> Result<Pending, OpsError> {
    let client = authorization(services, name)?;
    let pkce = Pkce::generate();
    let nonce = format!("{:032x}", rand::random::<u128>());
    let url = client.authorize_url(&pkce, redirect, redirect.map(|_| nonce.as_str()));
    Ok(Pending {
        pkce,
        url,
        state: nonce,
    })
}

/// Starts (or restarts) authorizing `name`, kept in `pending`; returns the URL to send the
/// user to.
pub fn begin_authorization(
    services: &Services,
    pending: &PendingAuth,
    name: &str,
) -> Result<String, OpsError> {
    // With a registered redirect URI Dropbox sends the user back to /callback; without one it
    // shows a code to paste.
    let redirect = redirect_uri(services, name);
    let started = start(services, name, redirect.as_deref())?;
    let url = started.url.clone();
    pending
        .lock()
        .map_err(|_| OpsError::Internal("auth lock poisoned".into()))?
        .insert(name.to_string(), started);
    Ok(url)
}

/// The authorization of `name` waiting for its code, if any.
pub fn pending_authorization(pending: &PendingAuth, name: &str) -> Option<Pending> {
    pending.lock().ok()?.get(name).cloned()
}

/// The pending authorization whose `state` is `nonce` (the redirect flow), by destination.
pub fn pending_by_state(pending: &PendingAuth, nonce: &str) -> Option<(String, Pending)> {
    pending.lock().ok().and_then(|pending| {
        pending
            .iter()
            .find(|(_, p)| crate::redact::ct_eq(p.state.as_bytes(), nonce.as_bytes()))
            .map(|(name, p)| (name.clone(), p.clone()))
    })
}

/// Exchanges `code` for `started` (with the redirect URI the flow used, if any).
pub async fn exchange(
    services: &Services,
    name: &str,
    started: &Pending,
    code: &str,
    redirect: Option<&str>,
) -> Result<(), TransferError> {
    let client =
        authorization(services, name).map_err(|e| TransferError::Permanent(e.to_string()))?;
    client
        .exchange_code(code, &started.pkce.verifier, redirect)
        .await
}

/// Exchanges the pasted code; on success the waiting uploads of `name` may run at once (the
/// caller wakes its workers).
pub async fn finish_authorization(
    store: &Store,
    services: &Services,
    pending: &PendingAuth,
    name: &str,
    code: &str,
) -> Result<(), OpsError> {
    authorization(services, name)?;
    // ASCII whitespace only: the schema's `\S` counts other Unicode spaces as characters, and
    // so does the service the code goes to.
    let code = code.trim_matches(|c: char| c.is_ascii_whitespace());
    if code.is_empty() {
        return Err(OpsError::Validation(vec![FieldError::new(
            "code",
            "paste the code (or, for Google, the address the browser ended on)",
        )]));
    }
    let started = pending_authorization(pending, name).ok_or_else(|| {
        OpsError::Conflict("start the authorization first (POST …/authorize)".into())
    })?;
    exchange(services, name, &started, code, None)
        .await
        .map_err(|e| match e {
            TransferError::Permanent(m) | TransferError::Unauthorized(m) => {
                OpsError::Validation(vec![FieldError::new("code", m)])
            }
            // Dropbox unreachable or failing: not our fault, and worth trying again.
            other => OpsError::BadGateway(format!("the service could not be asked: {other}")),
        })?;
    authorized(store, pending, name).await?;
    Ok(())
}

/// After a successful code exchange (any flow): the pending authorization is done and the jobs
/// that waited for the destination are runnable now; how many.
pub async fn authorized(
    store: &Store,
    pending: &PendingAuth,
    destination: &str,
) -> Result<u64, StoreError> {
    if let Ok(mut pending) = pending.lock() {
        pending.remove(destination);
    }
    let woken = store
        .wake_tag(&crate::jobs::destination_tag(destination))
        .await?;
    Ok(woken
        + store
            .wake_tag(&crate::jobs::google_delta::source_tag(destination))
            .await?)
}
