//! What every HTTP client of a destination or source needs: the `Retry-After` header read the
//! way servers write it, and the stall watchdog for uploads — a request body handed to hyper in
//! slices, each slice taken being proof the upload moves, so a connection that stops moving is
//! abandoned without capping how long a healthy chunk may take.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::time::Instant;

/// A request that got no answer, as the retry decision needs it: `what` (service and call), the
/// error with its causes, and never the URL (presigned and upload URLs are credentials). A
/// request that could not even be built (a malformed URL or header: the configuration) is
/// permanent; everything else, network trouble, is temporary.
pub fn transport_error(what: &str, e: reqwest::Error) -> super::TransferError {
    let e = e.without_url();
    let mut message = format!("{what}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if e.is_builder() {
        super::TransferError::Permanent(message)
    } else {
        super::TransferError::Temporary(message)
    }
}

/// Upload bodies are handed to hyper in slices this big.
pub const BODY_SLICE: usize = 256 * 1024;

/// `Retry-After` as delta-seconds or an HTTP date (a date in the past is no wait).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// When the body stream last handed hyper a slice.
pub struct Progress {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    pub fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// The body as slices; hyper pulls the next one only once the socket took the previous one,
/// so each pull is proof the upload is moving.
pub fn sliced(
    data: Bytes,
    progress: Arc<Progress>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let len = data.len();
    futures::stream::iter((0..len).step_by(BODY_SLICE)).map(move |start| {
        progress.touch();
        Ok(data.slice(start..len.min(start + BODY_SLICE)))
    })
}

pub enum Watched {
    Failed(reqwest::Error),
    Stalled,
}

/// Runs `exchange` until it finishes or nothing has moved for `stall`.
pub async fn watch_progress<T>(
    exchange: impl Future<Output = reqwest::Result<T>>,
    progress: &Progress,
    stall: Duration,
) -> Result<T, Watched> {
    tokio::pin!(exchange);
    loop {
        let deadline = progress.last() + stall;
        tokio::select! {
            result = &mut exchange => return result.map_err(Watched::Failed),
            () = tokio::time::sleep_until(deadline) => {
                if progress.last() + stall <= Instant::now() {
                    return Err(Watched::Stalled);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now = "2026-12-02T10:00:00Z".parse::<DateTime<Utc>>().unwrap();
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 02 Dec 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 02 Dec 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
