-- google_delta: a Google Drive account mirrored to destinations.
--
-- gdrive_sources: where each source's changes feed stands. `page_token` moves only in the same
-- transaction that records every change it covers in gdrive_files, so a crash never skips a
-- change and never loses the token. While the first full listing runs, `start_token` holds the
-- feed position taken before it and `list_cursor` the listing's next page.
create table gdrive_sources (
    source text primary key,
    page_token text,
    start_token text,
    list_cursor text,
    changes_cursor text,
    root_id text,
    initial_done_at integer,
    last_sync_at integer,
    last_error text
);

-- What Drive holds, as of the last listing: the mirror's wanted state. `rev` grows whenever
-- what a destination should hold for the file changes (content, path, removal).
create table gdrive_files (
    source text not null,
    file_id text not null,
    name text not null,
    mime text not null,
    parent text,
    drive_id text,
    is_folder integer not null default 0,
    size integer,
    md5 text,
    modified_time text,
    version text,
    -- Drive's file resource as last seen (export links), JSON.
    meta text not null,
    -- Path under the prefix, with the export's extension; null for folders and skipped files.
    path text,
    -- Why the file is not mirrored (a Form, a shortcut, an exclusion), or null.
    skipped text,
    -- Trashed or deleted in Drive.
    removed integer not null default 0,
    rev integer not null default 1,
    changed_at integer not null,
    primary key (source, file_id)
);
create index gdrive_files_parent on gdrive_files (source, parent);

-- What each destination holds of each file.
create table gdrive_copies (
    source text not null,
    destination text not null,
    file_id text not null,
    -- The rev of gdrive_files this copy matches.
    rev integer not null,
    -- The object's path at the destination (its current key), null once soft-deleted.
    remote text,
    size integer,
    md5 text,
    sha256 text,
    -- What the content was made from: md5 for binary files, modifiedTime for exports.
    identity text,
    stored_at integer not null,
    -- Soft-deleted: where it sits under .trash/ and since when.
    trashed_remote text,
    trashed_at integer,
    last_error text,
    primary key (source, destination, file_id)
);
create index gdrive_copies_content on gdrive_copies (source, destination, md5, size);

-- Objects kept aside at each destination: soft-deleted files and previous versions, for the
-- purge and the keep-N policy.
create table gdrive_kept (
    source text not null,
    destination text not null,
    remote text not null,
    kind text not null check (kind in ('trash', 'version')),
    file_id text not null,
    kept_at integer not null,
    primary key (source, destination, remote)
);
