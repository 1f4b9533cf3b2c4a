-- The durable job queue. Times are integer milliseconds since the Unix epoch (UTC).
-- States follow River: a job is final exactly when finalized_at is set, and holds a lease
-- (owner + fencing token) exactly while it is running.

-- autoincrement: a deleted or pruned job's id is never handed to a new job.
create table jobs (
    id                integer primary key autoincrement,
    kind              text    not null,
    queue             text    not null,
    args              text    not null check (json_valid(args)),
    state             text    not null check (state in
                          ('scheduled', 'available', 'running', 'retryable',
                           'completed', 'cancelled', 'discarded')),
    priority          integer not null default 2 check (priority between 1 and 4),
    attempt           integer not null default 0 check (attempt >= 0),
    max_attempts      integer not null check (max_attempts >= 1),
    idempotency_key   text,
    created_at        integer not null,
    scheduled_at      integer not null,
    attempted_at      integer,
    finalized_at      integer,
    checkpoint        text check (checkpoint is null or json_valid(checkpoint)),
    progress          text check (progress is null or json_valid(progress)),
    last_error        text,
    cancel_requested  integer not null default 0 check (cancel_requested in (0, 1)),
    lease_owner       text,
    lease_token       integer,
    lease_expires_at  integer,
    check ((finalized_at is not null) = (state in ('completed', 'cancelled', 'discarded'))),
    check ((lease_token is not null) = (state = 'running')),
    check ((lease_owner is not null) = (state = 'running')),
    check ((lease_expires_at is not null) = (state = 'running'))
);

-- A key is held for as long as its job exists (pruning frees it).
create unique index jobs_idempotency_key on jobs (idempotency_key)
    where idempotency_key is not null;
-- The fetch path: one index range scan per queue in claim order.
create index jobs_fetch on jobs (queue, priority, scheduled_at, id)
    where state in ('available', 'scheduled', 'retryable');
create index jobs_running on jobs (lease_owner, lease_expires_at) where state = 'running';
create index jobs_finalized on jobs (state, finalized_at) where finalized_at is not null;
create index jobs_kind_state on jobs (kind, state);
create index jobs_state_queue on jobs (state, queue);

-- One row per attempt, kept for inspection. lease_token is the fencing token of that attempt.
create table job_attempts (
    id           integer primary key,
    job_id       integer not null references jobs (id) on delete cascade,
    attempt      integer not null,
    lease_token  integer not null,
    worker       text    not null,
    started_at   integer not null,
    ended_at     integer,
    outcome      text    not null default 'running' check (outcome in
                     ('running', 'completed', 'retryable', 'snoozed', 'cancelled',
                      'discarded', 'lost', 'released')),
    error        text,
    unique (job_id, lease_token),
    check ((ended_at is null) = (outcome = 'running'))
);

-- Persisted queue switches (pause survives restarts).
create table queues (
    name        text    primary key,
    paused      integer not null default 0 check (paused in (0, 1)),
    updated_at  integer not null
);

-- Schedule definitions (from jobs/*.toml) and their persisted firing state.
create table schedules (
    name          text    primary key,
    kind          text    not null,
    args          text    not null check (json_valid(args)),
    queue         text,
    priority      integer,
    max_attempts  integer,
    spec          text    not null check (json_valid(spec)),
    enabled       integer not null default 1 check (enabled in (0, 1)),
    source        text    not null,
    last_slot_at  integer,
    last_run_at   integer,
    last_job_id   integer,
    next_run_at   integer,
    updated_at    integer not null
);
