//! The engine on real SQLite files: every state transition, idempotency, backoff persistence,
//! fencing, leases, pause/resume, pruning, shutdown, timeouts, wake-ups and concurrent use.

use std::time::Duration;

use offsite::queue::{
    EnqueueRequest, JobState, Store,
    state::{AttemptOutcome, now_ms},
    store::{Finish, FinishKind, JobFilter, NewJob, OpError, PruneAges},
};
use serde_json::json;

use crate::common::{Harness, test_config, wait_for};

fn outcomes(attempts: &[offsite::queue::store::AttemptRecord]) -> Vec<AttemptOutcome> {
    attempts.iter().map(|a| a.outcome).collect()
}

#[tokio::test]
async fn available_job_runs_and_completes_with_its_attempt_recorded() {
    let mut h = Harness::start().await;
    let job = h.probe("ok", 0).await;
    assert_eq!(job.state, JobState::Available);
    h.event(job.id, "finished").await;
    let done = h.wait_state(job.id, JobState::Completed).await;
    assert_eq!(done.attempt, 1);
    assert!(done.finalized_at.is_some());
    assert!(done.lease_owner.is_none());
    let attempts = h.store().attempts(job.id).await.unwrap();
    assert_eq!(outcomes(&attempts), vec![AttemptOutcome::Completed]);
    assert_eq!(attempts[0].worker, "test-worker");
    assert!(attempts[0].ended_at.unwrap() >= attempts[0].started_at);
    h.stop().await;
}

#[tokio::test]
async fn job_with_future_run_at_is_scheduled_and_runs_when_due() {
    let mut h = Harness::start().await;
    let run_at = chrono::Utc::now() + chrono::Duration::milliseconds(400);
    let job = h
        .enqueue_req(EnqueueRequest {
            kind: "probe".into(),
            args: json!({"mode": "ok"}),
            run_at: Some(run_at),
            ..Default::default()
        })
        .await;
    assert_eq!(job.state, JobState::Scheduled);
    h.event(job.id, "started").await;
    assert!(
        now_ms() >= run_at.timestamp_millis(),
        "ran before its run_at"
    );
    h.wait_state(job.id, JobState::Completed).await;
    h.stop().await;
}

#[tokio::test]
async fn failure_is_retryable_with_persisted_backoff_that_survives_a_restart() {
    let mut h = Harness::start().await;
    let job = h.probe("fail", 0).await;
    let failed = h.wait_state(job.id, JobState::Retryable).await;
    assert_eq!(failed.attempt, 1);
    assert_eq!(failed.last_error.as_deref(), Some("boom"));
    // attempt 1 → 1 s ± 10 %, measured from when the attempt ended.
    let attempts = h.store().attempts(job.id).await.unwrap();
    let ended = attempts[0].ended_at.unwrap();
    let wait = failed.scheduled_at - ended;
    assert!(
        (900..=1100).contains(&wait),
        "backoff of the first retry was {wait} ms"
    );
    assert_eq!(outcomes(&attempts), vec![AttemptOutcome::Retryable]);

    // The schedule is in the database: a new process sees the same run time.
    h.stop().await;
    let reopened = Store::open(&h.data_dir().join("offsite.db")).await.unwrap();
    let after = reopened.job(job.id).await.unwrap().unwrap();
    assert_eq!(after.scheduled_at, failed.scheduled_at);
    assert!(matches!(
        after.state,
        JobState::Retryable | JobState::Available
    ));
}

#[tokio::test]
async fn retries_until_success_then_completes() {
    let mut h = Harness::start().await;
    let job = h
        .enqueue_req(EnqueueRequest {
            kind: "probe".into(),
            args: json!({"mode": "fail_until", "n": 2}),
            ..Default::default()
        })
        .await;
    let done = h.wait_state(job.id, JobState::Completed).await;
    assert_eq!(done.attempt, 2);
    let attempts = h.store().attempts(job.id).await.unwrap();
    assert_eq!(
        outcomes(&attempts),
        vec![AttemptOutcome::Retryable, AttemptOutcome::Completed]
    );
    h.event(job.id, "finished").await;
    h.stop().await;
}

#[tokio::test]
async fn exhausted_attempts_discard_the_job() {
    let h = Harness::start().await;
    let job = h
        .enqueue_req(EnqueueRequest {
            kind: "probe".into(),
            args: json!({"mode": "fail"}),
            max_attempts: Some(1),
            ..Default::default()
        })
        .await;
    let done = h.wait_state(job.id, JobState::Discarded).await;
    assert_eq!(done.attempt, 1);
    assert!(done.last_error.unwrap().contains("none left"));
    assert!(done.finalized_at.is_some());
}

#[tokio::test]
async fn permanent_error_discards_at_once() {
    let h = Harness::start().await;
    let job = h.probe("permanent", 0).await;
    let done = h.wait_state(job.id, JobState::Discarded).await;
    assert_eq!(done.attempt, 1, "a permanent error must not be retried");
    assert_eq!(done.last_error.as_deref(), Some("bad input"));
}

#[tokio::test]
async fn job_can_end_itself_cancelled() {
    let h = Harness::start().await;
    let job = h.probe("cancel_self", 0).await;
    let done = h.wait_state(job.id, JobState::Cancelled).await;
    assert_eq!(done.last_error.as_deref(), Some("the backup vanished"));
    let attempts = h.store().attempts(job.id).await.unwrap();
    assert_eq!(outcomes(&attempts), vec![AttemptOutcome::Cancelled]);
}

#[tokio::test]
async fn snooze_waits_without_burning_an_attempt() {
    let h = Harness::start().await;
    let job = h.probe("snooze_once", 300).await;
    let snoozed = wait_for(h.store(), job.id, |j| j.state == JobState::Scheduled).await;
    assert_eq!(snoozed.attempt, 0, "a snooze is not an attempt");
    let done = h.wait_state(job.id, JobState::Completed).await;
    assert_eq!(done.attempt, 1);
    let attempts = h.store().attempts(job.id).await.unwrap();
    assert_eq!(
        outcomes(&attempts),
        vec![AttemptOutcome::Snoozed, AttemptOutcome::Completed]
    );
    assert!(attempts[1].started_at - attempts[0].ended_at.unwrap() >= 300);
}

#[tokio::test]
async fn idempotency_key_returns_the_existing_job_until_it_is_deleted() {
    let h = Harness::start().await;
    let state = &h.running().state;
    let req = EnqueueRequest {
        kind: "probe".into(),
        args: json!({"mode": "permanent"}),
        idempotency_key: Some("nightly:2026-11-22".into()),
        ..Default::default()
    };
    let job = state.registry.prepare(&req).unwrap();
    let first = state.store.enqueue(&job).await.unwrap();
    let second = state.store.enqueue(&job).await.unwrap();
    assert!(!first.deduplicated);
    assert!(second.deduplicated);
    assert_eq!(first.job.id, second.job.id);
    h.wait_state(first.job.id, JobState::Discarded).await;
    // Still held while the job exists, whatever its state.
    assert!(state.store.enqueue(&job).await.unwrap().deduplicated);
    state.store.delete(first.job.id).await.unwrap();
    let third = state.store.enqueue(&job).await.unwrap();
    assert!(!third.deduplicated);
    assert_ne!(third.job.id, first.job.id);
}

#[tokio::test]
async fn invalid_submissions_name_the_field_and_store_nothing() {
    let h = Harness::start().await;
    let registry = &h.running().state.registry;
    let bad = |kind: &str, args: serde_json::Value| EnqueueRequest {
        kind: kind.into(),
        args,
        ..Default::default()
    };
    let e = registry.prepare(&bad("nope", json!({}))).unwrap_err();
    assert_eq!(e[0].field, "kind");
    let e = registry
        .prepare(&bad("noop", json!({"steps": "many"})))
        .unwrap_err();
    assert_eq!(e[0].field, "args.steps");
    let e = registry
        .prepare(&bad("noop", json!({"steps": 1, "colour": "red"})))
        .unwrap_err();
    assert!(e[0].message.contains("colour"), "{e:?}");
    let e = registry
        .prepare(&bad("noop", json!({"step_ms": 900000})))
        .unwrap_err();
    assert_eq!(e[0].field, "args.step_ms");
    let e = registry
        .prepare(&EnqueueRequest {
            kind: "noop".into(),
            args: json!({}),
            priority: Some(9),
            queue: Some("nowhere".into()),
            ..Default::default()
        })
        .unwrap_err();
    let fields: Vec<&str> = e.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(fields, vec!["queue", "priority"]);
    assert!(
        h.store()
            .list_jobs(&JobFilter::default(), 10, None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn cancel_waiting_job_at_once_and_running_job_by_signal() {
    let mut h = Harness::start().await;
    let later = h
        .enqueue_req(EnqueueRequest {
            kind: "probe".into(),
            args: json!({"mode": "ok"}),
            run_at: Some(chrono::Utc::now() + chrono::Duration::hours(1)),
            ..Default::default()
        })
        .await;
    let cancelled = h.store().cancel(later.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);

    let running = h.probe("block", 0).await;
    h.event(running.id, "started").await;
    let flagged = h.store().cancel(running.id).await.unwrap();
    assert_eq!(flagged.state, JobState::Running);
    assert!(flagged.cancel_requested);
    h.running().state.executor.cancel_running(running.id);
    let done = h.wait_state(running.id, JobState::Cancelled).await;
    assert!(!done.cancel_requested);
    let attempts = h.store().attempts(running.id).await.unwrap();
    assert_eq!(outcomes(&attempts), vec![AttemptOutcome::Cancelled]);

    match h.store().cancel(running.id).await {
        Err(OpError::Conflict(m)) => assert!(m.contains("already cancelled"), "{m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    h.stop().await;
}

#[tokio::test]
async fn cancel_requested_by_another_process_reaches_the_running_job() {
    let mut h = Harness::start().await;
    let job = h.probe("block", 0).await;
    h.event(job.id, "started").await;
    // A second connection, as the CLI would open.
    let cli = Store::open(&h.data_dir().join("offsite.db")).await.unwrap();
    cli.cancel(job.id).await.unwrap();
    h.wait_state(job.id, JobState::Cancelled).await;
    h.stop().await;
}

#[tokio::test]
async fn retry_of_discarded_job_adds_an_attempt_and_resumes_from_checkpoint() {
    let h = Harness::start().await;
    let job = h
        .enqueue_req(EnqueueRequest {
            kind: "probe".into(),
            args: json!({"mode": "count", "n": 3}),
            max_attempts: Some(2),
            ..Default::default()
        })
        .await;
    let discarded = h.wait_state(job.id, JobState::Discarded).await;
    assert_eq!(discarded.checkpoint, Some(json!({"count": 2})));

    let again = h.store().retry(job.id, false).await.unwrap();
    assert_eq!(again.state, JobState::Available);
    assert_eq!(
        again.max_attempts, 3,
        "one attempt is added when they were used up"
    );
    assert!(again.finalized_at.is_none());
    h.running().state.executor.wake();
    let done = h.wait_state(job.id, JobState::Completed).await;
    assert_eq!(
        done.checkpoint,
        Some(json!({"count": 3})),
        "resumed from the checkpoint"
    );

    // Replaying a completed job from scratch: its attempts were used up, so it gets one more.
    let replay = h.store().retry(job.id, true).await.unwrap();
    assert_eq!(replay.checkpoint, None);
    assert_eq!(replay.max_attempts, 4);
    h.running().state.executor.wake();
    let done = h.wait_state(job.id, JobState::Discarded).await;
    assert_eq!(done.attempt, 4);
    assert_eq!(
        done.checkpoint,
        Some(json!({"count": 1})),
        "started over from no checkpoint"
    );
}

#[tokio::test]
async fn retrying_or_deleting_a_running_job_conflicts() {
    let mut h = Harness::start().await;
    let job = h.probe("block", 0).await;
    h.event(job.id, "started").await;
    assert!(matches!(
        h.store().retry(job.id, false).await,
        Err(OpError::Conflict(_))
    ));
    assert!(matches!(
        h.store().delete(job.id).await,
        Err(OpError::Conflict(_))
    ));
    assert!(matches!(
        h.store().retry(424242, false).await,
        Err(OpError::NotFound(424242))
    ));
    assert!(matches!(
        h.store().delete(424242).await,
        Err(OpError::NotFound(424242))
    ));
    h.stop().await;
}

#[tokio::test]
async fn bulk_retry_counts_the_jobs_it_brings_back() {
    let h = Harness::start().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(h.probe("permanent", 0).await.id);
    }
    let other = h.probe("ok", 0).await;
    for id in &ids {
        h.wait_state(*id, JobState::Discarded).await;
    }
    h.wait_state(other.id, JobState::Completed).await;
    let filter = JobFilter {
        states: vec![JobState::Discarded],
        kind: Some("probe".into()),
        queue: None,
    };
    assert_eq!(h.store().retry_many(&filter).await.unwrap(), 3);
    h.running().state.executor.wake();
    for id in &ids {
        let j = wait_for(h.store(), *id, |j| {
            j.attempt == 2 && j.state == JobState::Discarded
        })
        .await;
        assert_eq!(h.store().attempts(j.id).await.unwrap().len(), 2);
    }
    let completed = h.store().job(other.id).await.unwrap().unwrap();
    assert_eq!(
        completed.state,
        JobState::Completed,
        "the filter kept completed jobs out"
    );
}

/// Claims for `owner` directly through the store and starts what it got, as a worker process
/// does before running a job.
async fn claim(
    store: &Store,
    owner: &str,
    lease: Duration,
) -> Vec<offsite::queue::store::ClaimedJob> {
    let claimed = store
        .finish_and_claim(&[], &[], &[("default".into(), 10)], owner, lease)
        .await
        .unwrap()
        .2;
    let starts: Vec<(i64, i64, i64)> = claimed
        .iter()
        .map(|j| (j.id, j.lease_token, now_ms()))
        .collect();
    let (started, _, _) = store
        .finish_and_claim(&starts, &[], &[], owner, lease)
        .await
        .unwrap();
    assert_eq!(started.len(), claimed.len());
    claimed
}

fn new_job(key: Option<&str>) -> NewJob {
    NewJob {
        kind: "noop".into(),
        queue: "default".into(),
        args: "{}".into(),
        priority: 2,
        max_attempts: 5,
        scheduled_at: None,
        idempotency_key: key.map(String::from),
        tags: Vec::new(),
    }
}

#[tokio::test]
async fn expired_lease_is_rescued_and_the_old_worker_is_fenced_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("q.db")).await.unwrap();
    let job = store.enqueue(&new_job(None)).await.unwrap().job;

    let a = claim(&store, "worker-a", Duration::from_millis(0)).await;
    assert_eq!(a.len(), 1);
    // worker-a's lease (0 ms) has expired: the rescuer hands the job back.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.rescue(None).await.unwrap(), vec![job.id]);
    let rescued = store.job(job.id).await.unwrap().unwrap();
    assert_eq!(rescued.state, JobState::Available);
    assert_eq!(rescued.attempt, 1, "the lost attempt counts");

    let b = claim(&store, "worker-b", Duration::from_secs(60)).await;
    assert_eq!(b[0].attempt, 2);
    assert!(
        store
            .save_checkpoint(job.id, b[0].lease_token, &json!({"by": "b"}))
            .await
            .unwrap()
    );

    // worker-a wakes up and tries to write: nothing it says lands.
    assert!(
        !store
            .save_checkpoint(job.id, a[0].lease_token, &json!({"by": "a"}))
            .await
            .unwrap()
    );
    assert!(
        !store
            .save_progress(job.id, a[0].lease_token, &json!({"done": 1}))
            .await
            .unwrap()
    );
    let stale = Finish {
        job_id: job.id,
        lease_token: a[0].lease_token,
        at: now_ms(),
        how: FinishKind::Completed,
    };
    let (_, applied, _) = store
        .finish_and_claim(&[], &[stale], &[], "worker-a", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(applied.is_empty());
    let stale_fail = Finish {
        job_id: job.id,
        lease_token: a[0].lease_token,
        at: now_ms(),
        how: FinishKind::Discard {
            error: "late".into(),
        },
    };
    let (_, applied, _) = store
        .finish_and_claim(&[], &[stale_fail], &[], "worker-a", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(applied.is_empty());

    let current = store.job(job.id).await.unwrap().unwrap();
    assert_eq!(current.state, JobState::Running);
    assert_eq!(current.lease_owner.as_deref(), Some("worker-b"));
    assert_eq!(current.checkpoint, Some(json!({"by": "b"})));

    let fresh = Finish {
        job_id: job.id,
        lease_token: b[0].lease_token,
        at: now_ms(),
        how: FinishKind::Completed,
    };
    let (_, applied, _) = store
        .finish_and_claim(&[], &[fresh], &[], "worker-b", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(applied, vec![job.id]);
    let attempts = store.attempts(job.id).await.unwrap();
    assert_eq!(
        outcomes(&attempts),
        vec![AttemptOutcome::Lost, AttemptOutcome::Completed]
    );
    assert_eq!(attempts[0].worker, "worker-a");
}

#[tokio::test]
async fn lost_lease_on_the_last_attempt_discards() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("q.db")).await.unwrap();
    let mut job = new_job(None);
    job.max_attempts = 1;
    let job = store.enqueue(&job).await.unwrap().job;
    claim(&store, "gone", Duration::from_millis(0)).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.rescue(None).await.unwrap();
    let j = store.job(job.id).await.unwrap().unwrap();
    assert_eq!(j.state, JobState::Discarded);
    assert!(j.last_error.unwrap().contains("lease lost"));
}

#[tokio::test]
async fn restarted_worker_reclaims_its_own_orphans_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    std::fs::create_dir_all(&config.data_dir).unwrap();
    let store = Store::open(&config.database_path()).await.unwrap();
    let job = store.enqueue(&new_job(None)).await.unwrap().job;
    // "test-worker" claimed it with an hour-long lease, then died.
    claim(&store, "test-worker", Duration::from_secs(3600)).await;
    store.close().await;

    let h = Harness::start_in(dir, config).await;
    let done = h.wait_state(job.id, JobState::Completed).await;
    let attempts = h.store().attempts(done.id).await.unwrap();
    assert_eq!(
        outcomes(&attempts),
        vec![AttemptOutcome::Lost, AttemptOutcome::Completed]
    );
}

#[tokio::test]
async fn paused_queue_claims_nothing_until_resumed_and_pause_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.db");
    let store = Store::open(&path).await.unwrap();
    let job = store.enqueue(&new_job(None)).await.unwrap().job;
    store.set_paused("default", true).await.unwrap();
    assert!(claim(&store, "w", Duration::from_secs(30)).await.is_empty());
    store.close().await;

    let store = Store::open(&path).await.unwrap();
    assert!(
        store
            .queues()
            .await
            .unwrap()
            .iter()
            .any(|q| q.name == "default" && q.paused)
    );
    assert!(claim(&store, "w", Duration::from_secs(30)).await.is_empty());
    store.set_paused("default", false).await.unwrap();
    let claimed = claim(&store, "w", Duration::from_secs(30)).await;
    assert_eq!(
        claimed.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![job.id]
    );
}

#[tokio::test]
async fn resuming_a_paused_queue_lets_the_worker_run_its_jobs() {
    let h = Harness::start().await;
    h.store().set_paused("other", true).await.unwrap();
    let parked = h
        .enqueue_req(EnqueueRequest {
            kind: "probe".into(),
            args: json!({"mode": "ok"}),
            queue: Some("other".into()),
            ..Default::default()
        })
        .await;
    // A job on another queue runs to completion while the paused one waits.
    let runs = h.probe("ok", 0).await;
    h.wait_state(runs.id, JobState::Completed).await;
    assert_eq!(
        h.store().job(parked.id).await.unwrap().unwrap().state,
        JobState::Available
    );
    h.store().set_paused("other", false).await.unwrap();
    h.running().state.executor.wake();
    h.wait_state(parked.id, JobState::Completed).await;
}

#[tokio::test]
async fn claim_order_is_priority_then_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("q.db")).await.unwrap();
    let mut low = new_job(None);
    low.priority = 4;
    let low = store.enqueue(&low).await.unwrap().job;
    let normal = store.enqueue(&new_job(None)).await.unwrap().job;
    let mut urgent = new_job(None);
    urgent.priority = 1;
    let urgent = store.enqueue(&urgent).await.unwrap().job;
    let order: Vec<i64> = claim(&store, "w", Duration::from_secs(30))
        .await
        .iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(order, vec![urgent.id, normal.id, low.id]);
}

#[tokio::test]
async fn prune_deletes_finished_jobs_past_their_age_and_frees_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("q.db")).await.unwrap();
    let old = store.enqueue(&new_job(Some("old"))).await.unwrap().job;
    let keep = store.enqueue(&new_job(Some("running"))).await.unwrap().job;
    let claimed = claim(&store, "w", Duration::from_secs(30)).await;
    let finish_old = claimed.iter().find(|c| c.id == old.id).unwrap();
    let done = Finish {
        job_id: old.id,
        lease_token: finish_old.lease_token,
        at: now_ms(),
        how: FinishKind::Completed,
    };
    store
        .finish_and_claim(&[], &[done], &[], "w", Duration::from_secs(30))
        .await
        .unwrap();

    let ages = PruneAges {
        completed: Some(Duration::from_secs(3600)),
        cancelled: None,
        discarded: None,
    };
    assert_eq!(
        store.prune(&ages).await.unwrap(),
        0,
        "a fresh completion is kept"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let ages = PruneAges {
        completed: Some(Duration::from_millis(10)),
        cancelled: None,
        discarded: None,
    };
    assert_eq!(store.prune(&ages).await.unwrap(), 1);
    assert!(store.job(old.id).await.unwrap().is_none());
    assert!(
        store.attempts(old.id).await.unwrap().is_empty(),
        "attempts go with the job"
    );
    assert!(
        store.job(keep.id).await.unwrap().is_some(),
        "running jobs are never pruned"
    );
    assert!(
        !store
            .enqueue(&new_job(Some("old")))
            .await
            .unwrap()
            .deduplicated,
        "key freed"
    );
}

#[tokio::test]
async fn shutdown_hands_running_jobs_back_without_counting_the_attempt() {
    let mut h = Harness::start().await;
    let job = h.probe("block", 0).await;
    h.event(job.id, "started").await;
    let store = Store::open(&h.data_dir().join("offsite.db")).await.unwrap();
    h.stop().await;
    let j = store.job(job.id).await.unwrap().unwrap();
    assert_eq!(j.state, JobState::Available);
    assert_eq!(j.attempt, 0, "a shutdown is not an attempt");
    assert!(j.lease_owner.is_none());
    let attempts = store.attempts(job.id).await.unwrap();
    assert_eq!(outcomes(&attempts), vec![AttemptOutcome::Released]);
}

#[tokio::test]
async fn handler_ignoring_shutdown_is_stopped_after_the_grace_period() {
    let mut h = Harness::start_with(|c| c.engine.shutdown_grace = Duration::from_millis(200)).await;
    let job = h.probe("hang", 0).await;
    h.event(job.id, "started").await;
    let store = Store::open(&h.data_dir().join("offsite.db")).await.unwrap();
    h.stop().await;
    let j = store.job(job.id).await.unwrap().unwrap();
    assert_eq!(j.state, JobState::Available);
    assert_eq!(j.attempt, 0);
}

#[tokio::test]
async fn attempt_timeout_fails_the_attempt_as_retryable() {
    let h = Harness::start().await;
    let job = h.enqueue("strict", json!({"mode": "hang"})).await;
    let j = h.wait_state(job.id, JobState::Retryable).await;
    assert!(j.last_error.unwrap().contains("timed out after 300ms"));
}

#[tokio::test]
async fn stalled_attempt_fails_instead_of_holding_its_lease() {
    let h = Harness::start().await;
    let job = h.enqueue("stall", json!({})).await;
    let j = h.wait_state(job.id, JobState::Retryable).await;
    assert!(
        j.last_error.as_deref().unwrap_or("").contains("stalled"),
        "{j:?}"
    );
    assert!(j.lease_owner.is_none());
}

#[tokio::test]
async fn in_process_enqueue_wakes_the_worker_without_polling() {
    // With polling and watching effectively off, only the in-process wake-up can start it.
    let h = Harness::start_with(|c| {
        c.engine.poll_interval = Duration::from_secs(3600);
        c.engine.watch_interval = Duration::from_secs(3600);
    })
    .await;
    // Let the dispatcher settle into its idle wait first.
    let first = h.probe("ok", 0).await;
    h.wait_state(first.id, JobState::Completed).await;
    let job = h.probe("ok", 0).await;
    h.wait_state(job.id, JobState::Completed).await;
}

#[tokio::test]
async fn enqueue_from_another_process_is_noticed_by_the_watcher() {
    let h = Harness::start_with(|c| c.engine.poll_interval = Duration::from_secs(3600)).await;
    let first = h.probe("ok", 0).await;
    h.wait_state(first.id, JobState::Completed).await;
    let other = Store::open(&h.data_dir().join("offsite.db")).await.unwrap();
    let job = other.enqueue(&new_job(None)).await.unwrap().job;
    h.wait_state(job.id, JobState::Completed).await;
}

#[tokio::test]
async fn concurrent_writers_on_one_file_never_see_database_locked() {
    let h = Harness::start().await;
    let path = h.data_dir().join("offsite.db");
    let mut writers = Vec::new();
    for w in 0..3 {
        let path = path.clone();
        writers.push(tokio::spawn(async move {
            let store = Store::open(&path).await.unwrap();
            let mut ids = Vec::new();
            for i in 0..150 {
                let key = format!("w{w}-{i}");
                let job = store
                    .enqueue(&new_job(Some(&key)))
                    .await
                    .expect("enqueue never fails with a lock error");
                ids.push(job.job.id);
                if i % 10 == 0 {
                    store
                        .list_jobs(&JobFilter::default(), 20, None)
                        .await
                        .expect("read");
                }
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for w in writers {
        all.extend(w.await.unwrap());
    }
    assert_eq!(all.len(), 450);
    for id in all {
        h.wait_state(id, JobState::Completed).await;
    }
}

#[tokio::test]
async fn long_jobs_are_not_claimed_ahead_of_a_free_slot() {
    let mut h = Harness::start_with(|c| {
        c.queues.insert(
            "single".into(),
            offsite::config::QueueConfig { concurrency: 1 },
        );
    })
    .await;
    let on_single = |mode: &str| EnqueueRequest {
        kind: "probe".into(),
        args: json!({"mode": mode}),
        queue: Some("single".into()),
        ..Default::default()
    };
    let first = h.enqueue_req(on_single("block")).await;
    let second = h.enqueue_req(on_single("block")).await;
    h.event(first.id, "started").await;
    // A full dispatcher round on another queue has passed since.
    let other = h.probe("ok", 0).await;
    h.wait_state(other.id, JobState::Completed).await;
    let waiting = h.store().job(second.id).await.unwrap().unwrap();
    assert_eq!(
        waiting.state,
        JobState::Available,
        "not held by a worker that cannot run it yet"
    );
    h.stop().await;
}

#[tokio::test]
async fn processes_opening_a_new_database_at_once_migrate_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh.db");
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move { Store::open(&path).await.map(|_| ()) })
        })
        .collect();
    for open in opens {
        open.await.unwrap().expect("every concurrent open succeeds");
    }
}
