//! At most `rate` bytes per second to one destination, shared by every upload going there.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use crate::destinations::Destination;

pub struct Throttle {
    inner: Arc<dyn Destination>,
    rate: u64,
    /// When the bytes granted so far will have been sent at `rate`.
    free_at: Mutex<Option<Instant>>,
}

impl Throttle {
    pub fn new(inner: Arc<dyn Destination>, rate: u64) -> Self {
        Throttle {
            inner,
            rate,
            free_at: Mutex::new(None),
        }
    }

    /// How long to wait before `bytes` more may go, booking them.
    fn book(&self, bytes: u64, now: Instant) -> Duration {
        let mut free_at = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
        // Time not used is not saved up: an idle destination starts afresh.
        let start = free_at.filter(|t| *t > now).unwrap_or(now);
        *free_at = Some(start + Duration::from_secs_f64(bytes as f64 / self.rate as f64));
        start - now
    }
}

#[async_trait::async_trait]
impl super::Layer for Throttle {
    fn inner(&self) -> &dyn Destination {
        &*self.inner
    }

    async fn pace(&self, bytes: u64) {
        self.inner.pace(bytes).await;
        let wait = self.book(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_spread_at_the_rate_and_idle_time_is_not_saved_up() {
        let t = Throttle::new(
            Arc::new(crate::destinations::folder::LocalFolder::new(
                "/nonexistent".into(),
            )),
            1000,
        );
        let now = Instant::now();
        assert_eq!(t.book(500, now), Duration::ZERO);
        assert_eq!(t.book(500, now), Duration::from_millis(500));
        assert_eq!(t.book(1000, now), Duration::from_secs(1));
        // Long after: no credit for the idle second.
        let later = now + Duration::from_secs(10);
        assert_eq!(t.book(1000, later), Duration::ZERO);
        assert_eq!(t.book(1, later), Duration::from_secs(1));
    }
}
