//! Prometheus metrics at `/metrics`: attempts and their durations counted in process (the
//! executor reports them as an [`AttemptObserver`]), job counts by state read from the database
//! at scrape time (so they include every process's work).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use axum::{
    Router,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{
    http::error::ApiError,
    queue::{executor::AttemptObserver, store::Store},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    kind: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    queue: String,
    state: String,
}

#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Mutex<Registry>,
    attempts: Family<AttemptLabels, Counter>,
    durations: Family<KindLabels, Histogram>,
    jobs: Family<StateLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let attempts = Family::<AttemptLabels, Counter>::default();
        let durations = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 7200.0])
        });
        let jobs = Family::<StateLabels, Gauge>::default();
        let mut registry = Registry::with_prefix("offsite");
        registry.register(
            "job_attempts",
            "Finished job attempts by kind and outcome",
            attempts.clone(),
        );
        registry.register(
            "job_attempt_duration_seconds",
            "Duration of job attempts by kind",
            durations.clone(),
        );
        registry.register(
            "jobs",
            "Jobs in the database by queue and state",
            jobs.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                attempts,
                durations,
                jobs,
            }),
        }
    }

    /// The text exposition, with job counts fresh from the database.
    pub async fn render(&self, store: &Store, queues: &[String]) -> anyhow::Result<String> {
        let counts = crate::ops::job_counts(store, queues).await?;
        self.inner.jobs.clear();
        for (queue, state, n) in counts {
            self.inner
                .jobs
                .get_or_create(&StateLabels {
                    queue,
                    state: state.to_string(),
                })
                .set(n);
        }
        let mut out = String::new();
        let registry = self
            .inner
            .registry
            .lock()
            .map_err(|_| anyhow::anyhow!("metrics lock poisoned"))?;
        encode(&mut out, &registry)?;
        Ok(out)
    }
}

impl AttemptObserver for Metrics {
    fn attempt_finished(&self, kind: &str, outcome: &str) {
        self.inner
            .attempts
            .get_or_create(&AttemptLabels {
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    fn attempt_duration(&self, kind: &str, d: Duration) {
        self.inner
            .durations
            .get_or_create(&KindLabels { kind: kind.into() })
            .observe(d.as_secs_f64());
    }
}

/// `/metrics` over `store`, counting jobs of `queues` (and of any other queue holding some).
pub fn router<S: Clone + Send + Sync + 'static>(
    metrics: Metrics,
    store: Store,
    queues: Vec<String>,
) -> Router<S> {
    Router::new().route(
        "/metrics",
        get(move || async move {
            let text = metrics
                .render(&store, &queues)
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok::<Response, ApiError>(
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
                    .into_response(),
            )
        }),
    )
}
