//! `noop`: a job that does nothing, in optional timed steps with a checkpoint after each.
//! It measures the engine itself (benchmarks) and lets an operator check an installation
//! end to end — enqueue, pickup, checkpoint, resume after a restart — without touching data.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Kind, services::Services};
use crate::queue::{FieldError, JobArgs, JobContext, JobError, KindSettings, Progress, Worker};

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoopArgs {
    /// Steps to walk; 0 finishes at once.
    #[serde(default)]
    pub steps: u32,
    /// Milliseconds per step.
    #[serde(default)]
    pub step_ms: u64,
}

impl JobArgs for NoopArgs {
    const KIND: &'static str = "noop";

    fn settings() -> KindSettings {
        KindSettings {
            queue: "default".into(),
            max_attempts: 25,
            priority: 2,
            timeout: None,
            stall_timeout: None,
        }
    }

    fn validate(&self) -> Result<(), FieldError> {
        if self.steps > 1_000_000 {
            return Err(FieldError::new("steps", "must be at most 1000000"));
        }
        if self.step_ms > 600_000 {
            return Err(FieldError::new(
                "step_ms",
                "must be at most 600000 (10 minutes)",
            ));
        }
        Ok(())
    }
}

impl Kind for NoopArgs {
    type Worker = NoopWorker;
    fn worker(_: &std::sync::Arc<Services>) -> NoopWorker {
        NoopWorker
    }
}

/// Saved after every step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NoopCheckpoint {
    /// Steps done so far.
    pub step: u32,
    /// The step each attempt started from: `[0, 7]` means the second attempt resumed at 7.
    pub resumed_from: Vec<u32>,
}

pub struct NoopWorker;

impl Worker<NoopArgs> for NoopWorker {
    async fn work(&self, ctx: JobContext, args: NoopArgs) -> Result<(), JobError> {
        if args.steps == 0 {
            return Ok(());
        }
        let mut cp: NoopCheckpoint = ctx.checkpoint().unwrap_or_default();
        cp.resumed_from.push(cp.step);
        while cp.step < args.steps {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(args.step_ms)) => {}
                _ = ctx.stopping() => return Err(JobError::Interrupted),
            }
            cp.step += 1;
            ctx.save_checkpoint(&cp).await?;
            ctx.progress(Progress {
                done: u64::from(cp.step),
                total: Some(u64::from(args.steps)),
                unit: "steps",
                message: None,
            })
            .await?;
        }
        Ok(())
    }
}
