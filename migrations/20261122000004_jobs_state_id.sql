-- Listing jobs by state, newest first (the panel every second, `GET /jobs?state=`, the Home
-- Assistant sync): walks this index and stops at the limit instead of sorting every job in that
-- state (measured: 116 ms → 2 ms with 100k queued jobs).
create index jobs_state_id on jobs (state, id);
