//! Background upkeep shared by all workers on a database: rescue jobs whose lease expired
//! (their worker died), show due jobs as available, and prune finished jobs after their age.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{
    executor::Executor,
    store::{PruneAges, Store},
};

#[derive(Debug, Clone)]
pub struct MaintenanceSettings {
    pub rescue_every: Duration,
    pub promote_every: Duration,
    pub prune_every: Duration,
    pub prune: PruneAges,
}

pub fn start(
    store: Store,
    executor: Executor,
    settings: MaintenanceSettings,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut next_rescue = tokio::time::Instant::now() + settings.rescue_every;
        let mut next_promote = tokio::time::Instant::now() + settings.promote_every;
        // Prune soon after start, then at its interval.
        let mut next_prune = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let wake = next_rescue.min(next_promote).min(next_prune);
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = stop.cancelled() => return,
            }
            let now = tokio::time::Instant::now();
            if now >= next_rescue {
                next_rescue = now + settings.rescue_every;
                match store.rescue_except(None, &executor.running_ids()).await {
                    Ok(ids) if !ids.is_empty() => {
                        warn!(jobs = ?ids, "rescued jobs whose worker stopped renewing its lease");
                        executor.wake();
                    }
                    Ok(_) => {}
                    Err(e) => error!(error = %e, "lease rescue failed"),
                }
            }
            if now >= next_promote {
                next_promote = now + settings.promote_every;
                if let Err(e) = store.promote_due().await {
                    error!(error = %e, "promoting due jobs failed");
                }
            }
            if now >= next_prune {
                next_prune = now + settings.prune_every;
                match store.prune(&settings.prune).await {
                    Ok(0) => {}
                    Ok(n) => info!(jobs = n, "pruned finished jobs"),
                    Err(e) => error!(error = %e, "pruning finished jobs failed"),
                }
            }
        }
    })
}
