-- What was uploaded where: the replacement for the seed add-on's uploaded.json.
create table uploads (
    id            integer primary key autoincrement,
    destination   text    not null,
    source        text    not null,
    backup_slug   text    not null,
    backup_name   text    not null,
    backup_date   integer not null,
    size          integer not null,
    remote_path   text    not null,
    content_hash  text,
    job_id        integer,
    uploaded_at   integer not null,
    -- Set when retention deleted the remote copy.
    deleted_at    integer,
    deleted_by_job integer,
    unique (destination, backup_slug)
);
create index uploads_destination on uploads (destination, backup_date);
