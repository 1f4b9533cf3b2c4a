-- Tags say what a job waits on (e.g. `destination:dropbox`), so waking jobs for a destination
-- needs no knowledge of a kind's args, and works for kinds that name several destinations.
alter table jobs add column tags text not null default '[]' check (json_valid(tags));

update jobs set tags = json_array('destination:' || json_extract(args, '$.destination'))
where kind in ('snapshot_upload', 'retention_prune')
  and json_extract(args, '$.destination') is not null;

-- The last time each tag was woken. A job that snoozes on a tag after an attempt that started
-- before the wake is not parked: the wake it would have missed already happened.
create table wakes (
    tag text primary key,
    at  integer not null
);
