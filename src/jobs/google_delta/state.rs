//! The mirror's sync state in SQLite: where the changes feed stands, what Drive holds (the
//! wanted state), and what each destination holds of each file.

use std::collections::HashMap;

use sqlx::{Row, SqlitePool, sqlite::SqliteRow};

use crate::sources::google_drive::DriveFile;

pub type Db = (SqlitePool, SqlitePool);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct SourceState {
    pub page_token: Option<String>,
    pub start_token: Option<String>,
    pub list_cursor: Option<String>,
    pub changes_cursor: Option<String>,
    pub root_id: Option<String>,
    pub initial_done_at: Option<i64>,
    pub last_sync_at: Option<i64>,
    pub last_error: Option<String>,
}

pub async fn source(db: &Db, source: &str) -> Result<SourceState, sqlx::Error> {
    let row = sqlx::query("select * from gdrive_sources where source = ?")
        .bind(source)
        .fetch_optional(&db.1)
        .await?;
    Ok(match row {
        None => SourceState::default(),
        Some(r) => SourceState {
            page_token: r.try_get("page_token")?,
            start_token: r.try_get("start_token")?,
            list_cursor: r.try_get("list_cursor")?,
            changes_cursor: r.try_get("changes_cursor")?,
            root_id: r.try_get("root_id")?,
            initial_done_at: r.try_get("initial_done_at")?,
            last_sync_at: r.try_get("last_sync_at")?,
            last_error: r.try_get("last_error")?,
        },
    })
}

/// The first listing begins: the feed position taken before it, and My Drive's root.
pub async fn begin_listing(
    db: &Db,
    source: &str,
    start: &str,
    root: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into gdrive_sources (source, start_token, root_id, listing) values (?1, ?2, ?3, 1) \
         on conflict (source) do update set start_token = ?2, root_id = ?3, list_cursor = null, \
             page_token = null, changes_cursor = null, listing = listing + 1",
    )
    .bind(source)
    .bind(start)
    .bind(root)
    .execute(&db.0)
    .await?;
    Ok(())
}

pub async fn set_result(db: &Db, source: &str, error: Option<&str>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into gdrive_sources (source, last_sync_at, last_error) values (?1, ?2, ?3) \
         on conflict (source) do update set last_sync_at = coalesce(?2, last_sync_at), \
             last_error = ?3",
    )
    .bind(source)
    .bind(error.is_none().then(now_ms))
    .bind(error)
    .execute(&db.0)
    .await?;
    Ok(())
}

/// Whether what a destination should hold changed between `old` and `new`.
fn differs(old: &SqliteRow, new: &DriveFile, removed: bool) -> Result<bool, sqlx::Error> {
    let old_removed: bool = old.try_get("removed")?;
    Ok(old_removed != removed
        || old.try_get::<String, _>("name")? != new.name
        || old.try_get::<String, _>("mime")? != new.mime_type
        || old.try_get::<Option<String>, _>("parent")?.as_deref()
            != new.parents.first().map(|s| s.as_str())
        || old.try_get::<Option<String>, _>("md5")? != new.md5_checksum
        || old.try_get::<Option<i64>, _>("size")? != new.size.map(|s| s as i64)
        || (new.is_workspace()
            && old.try_get::<Option<String>, _>("modified_time")? != new.modified_time))
}

async fn upsert(
    tx: &mut sqlx::SqliteConnection,
    source: &str,
    f: &DriveFile,
    removed: bool,
) -> Result<(), sqlx::Error> {
    let old = sqlx::query("select * from gdrive_files where source = ? and file_id = ?")
        .bind(source)
        .bind(&f.id)
        .fetch_optional(&mut *tx)
        .await?;
    let bump = match &old {
        None => 1,
        Some(o) => i64::from(differs(o, f, removed)?),
    };
    let meta = serde_json::to_string(f).unwrap_or_default();
    sqlx::query(
        "insert into gdrive_files (source, file_id, name, mime, parent, drive_id, is_folder, size, \
             md5, modified_time, version, meta, removed, rev, changed_at) \
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 1, ?14) \
         on conflict (source, file_id) do update set name = ?3, mime = ?4, parent = ?5, \
             drive_id = ?6, is_folder = ?7, size = ?8, md5 = ?9, modified_time = ?10, \
             version = ?11, meta = ?12, removed = ?13, rev = rev + ?15, \
             changed_at = case when ?15 > 0 then ?14 else changed_at end",
    )
    .bind(source)
    .bind(&f.id)
    .bind(&f.name)
    .bind(&f.mime_type)
    .bind(f.parents.first())
    .bind(&f.drive_id)
    .bind(f.is_folder())
    .bind(f.size.map(|s| s as i64))
    .bind(&f.md5_checksum)
    .bind(&f.modified_time)
    .bind(&f.version)
    .bind(meta)
    .bind(removed)
    .bind(now_ms())
    .bind(bump)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn mark_removed(
    tx: &mut sqlx::SqliteConnection,
    source: &str,
    id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update gdrive_files set removed = 1, rev = rev + 1, changed_at = ?3 \
         where source = ?1 and file_id = ?2 and removed = 0",
    )
    .bind(source)
    .bind(id)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// One page of the first listing, with the listing's next page, in one transaction; the last
/// page also makes the feed position taken before the listing the source's page token.
pub async fn apply_listing(
    db: &Db,
    source: &str,
    files: &[DriveFile],
    next: Option<&str>,
) -> Result<(), sqlx::Error> {
    let mut tx = db.0.begin().await?;
    for f in files {
        upsert(&mut tx, source, f, f.trashed).await?;
    }
    // Stamped with this listing's generation; shared drives' folders always count as listed.
    let ids: Vec<&str> = files.iter().map(|f| f.id.as_str()).collect();
    for chunk in ids.chunks(500) {
        // Numbered throughout: sqlx counts a bare `?` after `?1` differently from SQLite.
        let marks = (0..chunk.len())
            .map(|i| format!("?{}", i + 2))
            .collect::<Vec<_>>()
            .join(",");
        let q = format!(
            "update gdrive_files set listed = (select listing from gdrive_sources where source = ?1) \
             where source = ?1 and (file_id in ({marks}) or parent = '{}')",
            super::paths::SHARED_DRIVES
        );
        let mut query = sqlx::query(&q).bind(source);
        for id in chunk {
            query = query.bind(*id);
        }
        query.execute(&mut *tx).await?;
    }
    if next.is_none() {
        // What this listing did not see is gone from Drive.
        sqlx::query(
            "update gdrive_files set removed = 1, rev = rev + 1, changed_at = ?2 \
             where source = ?1 and removed = 0 and parent is not ?3 \
                 and listed < (select listing from gdrive_sources where source = ?1)",
        )
        .bind(source)
        .bind(now_ms())
        .bind(super::paths::SHARED_DRIVES)
        .execute(&mut *tx)
        .await?;
    }
    match next {
        Some(n) => {
            sqlx::query("update gdrive_sources set list_cursor = ? where source = ?")
                .bind(n)
                .bind(source)
                .execute(&mut *tx)
                .await?;
        }
        None => {
            sqlx::query(
                "update gdrive_sources set page_token = start_token, list_cursor = null, \
                     initial_done_at = ? where source = ?",
            )
            .bind(now_ms())
            .bind(source)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await
}

/// One page of the changes feed, recorded in the same transaction as the feed's next
/// position: the next page's token, or on the last page the new start token, which becomes
/// the page token. A crash before the commit repeats the page; none after it is lost.
pub async fn apply_changes(
    db: &Db,
    source: &str,
    changes: &[crate::sources::google_drive::Change],
    next: Option<&str>,
    new_start: Option<&str>,
) -> Result<(), sqlx::Error> {
    let mut tx = db.0.begin().await?;
    for c in changes {
        if c.change_type.as_deref().is_some_and(|t| t != "file") {
            continue; // a shared drive's own change (renamed, say); drives are read each run
        }
        match (&c.file, c.removed) {
            (Some(f), false) => upsert(&mut tx, source, f, f.trashed).await?,
            _ => {
                if let Some(id) = &c.file_id {
                    mark_removed(&mut tx, source, id).await?;
                }
            }
        }
    }
    match new_start {
        Some(token) => {
            sqlx::query(
                "update gdrive_sources set page_token = ?, changes_cursor = null where source = ?",
            )
            .bind(token)
            .bind(source)
            .execute(&mut *tx)
            .await?;
        }
        None => {
            sqlx::query("update gdrive_sources set changes_cursor = ? where source = ?")
                .bind(next)
                .bind(source)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await
}

/// Shared drives as folders at `shared-drives/<name>`.
pub async fn put_shared_drives(
    db: &Db,
    source: &str,
    drives: &[(String, String)],
) -> Result<(), sqlx::Error> {
    let mut tx = db.0.begin().await?;
    for (id, name) in drives {
        let f = DriveFile {
            id: id.clone(),
            name: name.clone(),
            mime_type: crate::sources::google_drive::FOLDER.into(),
            parents: vec![super::paths::SHARED_DRIVES.into()],
            md5_checksum: None,
            size: None,
            modified_time: None,
            version: None,
            trashed: false,
            drive_id: Some(id.clone()),
            export_links: Default::default(),
        };
        upsert(&mut tx, source, &f, false).await?;
    }
    tx.commit().await
}

/// A row of gdrive_files, as the path resolution and the file job read it.
#[derive(Debug, Clone)]
pub struct FileRow {
    pub file_id: String,
    pub name: String,
    pub mime: String,
    pub parent: Option<String>,
    pub is_folder: bool,
    pub size: Option<u64>,
    pub md5: Option<String>,
    pub modified_time: Option<String>,
    pub meta: String,
    pub path: Option<String>,
    pub skipped: Option<String>,
    pub removed: bool,
    pub rev: i64,
}

fn file_row(r: &SqliteRow) -> Result<FileRow, sqlx::Error> {
    Ok(FileRow {
        file_id: r.try_get("file_id")?,
        name: r.try_get("name")?,
        mime: r.try_get("mime")?,
        parent: r.try_get("parent")?,
        is_folder: r.try_get("is_folder")?,
        size: r.try_get::<Option<i64>, _>("size")?.map(|s| s as u64),
        md5: r.try_get("md5")?,
        modified_time: r.try_get("modified_time")?,
        meta: r.try_get("meta")?,
        path: r.try_get("path")?,
        skipped: r.try_get("skipped")?,
        removed: r.try_get("removed")?,
        rev: r.try_get("rev")?,
    })
}

pub async fn files(db: &Db, source: &str) -> Result<Vec<FileRow>, sqlx::Error> {
    sqlx::query("select * from gdrive_files where source = ?")
        .bind(source)
        .fetch_all(&db.1)
        .await?
        .iter()
        .map(file_row)
        .collect()
}

pub async fn file(db: &Db, source: &str, id: &str) -> Result<Option<FileRow>, sqlx::Error> {
    sqlx::query("select * from gdrive_files where source = ? and file_id = ?")
        .bind(source)
        .bind(id)
        .fetch_optional(&db.1)
        .await?
        .as_ref()
        .map(file_row)
        .transpose()
}

/// New paths and skip reasons, by file id; a file whose either changed gets a new rev.
pub async fn set_paths(
    db: &Db,
    source: &str,
    changed: &HashMap<String, (Option<String>, Option<String>)>,
) -> Result<(), sqlx::Error> {
    let mut tx = db.0.begin().await?;
    for (id, (path, skipped)) in changed {
        sqlx::query(
            "update gdrive_files set path = ?3, skipped = ?4, rev = rev + 1, changed_at = ?5 \
             where source = ?1 and file_id = ?2",
        )
        .bind(source)
        .bind(id)
        .bind(path)
        .bind(skipped)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Files whose copy at destination `?2` is behind: one that should be there and is not (or
/// holds an older rev), or one that is there and should not be.
const BEHIND: &str = "from gdrive_files f left join gdrive_copies c \
         on c.source = f.source and c.file_id = f.file_id and c.destination = ?2 \
     where f.source = ?1 and f.is_folder = 0 \
         and (c.rev is null or c.rev < f.rev) \
         and (c.remote is not null or (f.path is not null and f.removed = 0))";

/// (file id, rev) of files whose copy at `destination` is behind: what the file jobs are for.
pub async fn behind(
    db: &Db,
    source: &str,
    destination: &str,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query(&format!("select f.file_id, f.rev {BEHIND}"))
        .bind(source)
        .bind(destination)
        .fetch_all(&db.1)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("file_id")?, r.try_get("rev")?)))
        .collect()
}

#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct CopyRow {
    pub destination: String,
    pub file_id: String,
    pub rev: i64,
    pub remote: Option<String>,
    pub size: Option<u64>,
    pub md5: Option<String>,
    pub sha256: Option<String>,
    pub identity: Option<String>,
    /// Milliseconds since the epoch.
    pub stored_at: i64,
    pub trashed_remote: Option<String>,
    pub trashed_at: Option<i64>,
}

fn copy_row(r: &SqliteRow) -> Result<CopyRow, sqlx::Error> {
    Ok(CopyRow {
        destination: r.try_get("destination")?,
        file_id: r.try_get("file_id")?,
        rev: r.try_get("rev")?,
        remote: r.try_get("remote")?,
        size: r.try_get::<Option<i64>, _>("size")?.map(|s| s as u64),
        md5: r.try_get("md5")?,
        sha256: r.try_get("sha256")?,
        identity: r.try_get("identity")?,
        stored_at: r.try_get("stored_at")?,
        trashed_remote: r.try_get("trashed_remote")?,
        trashed_at: r.try_get("trashed_at")?,
    })
}

pub async fn copy(
    db: &Db,
    source: &str,
    destination: &str,
    id: &str,
) -> Result<Option<CopyRow>, sqlx::Error> {
    sqlx::query("select * from gdrive_copies where source = ? and destination = ? and file_id = ?")
        .bind(source)
        .bind(destination)
        .bind(id)
        .fetch_optional(&db.1)
        .await?
        .as_ref()
        .map(copy_row)
        .transpose()
}

pub async fn copies_of(db: &Db, source: &str, id: &str) -> Result<Vec<CopyRow>, sqlx::Error> {
    sqlx::query("select * from gdrive_copies where source = ? and file_id = ? order by destination")
        .bind(source)
        .bind(id)
        .fetch_all(&db.1)
        .await?
        .iter()
        .map(copy_row)
        .collect()
}

/// A current copy at `destination` of other file with this content, to copy on the server.
pub async fn same_content(
    db: &Db,
    source: &str,
    destination: &str,
    md5: &str,
    size: u64,
    not: &str,
) -> Result<Option<CopyRow>, sqlx::Error> {
    sqlx::query(
        "select * from gdrive_copies where source = ? and destination = ? and md5 = ? \
             and size = ? and file_id != ? and remote is not null and sha256 is not null limit 1",
    )
    .bind(source)
    .bind(destination)
    .bind(md5)
    .bind(size as i64)
    .bind(not)
    .fetch_optional(&db.1)
    .await?
    .as_ref()
    .map(copy_row)
    .transpose()
}

/// Records what `destination` now holds of a file (only forward: an older rev never
/// overwrites a newer record).
pub async fn record_copy(db: &Db, source: &str, c: &CopyRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into gdrive_copies (source, destination, file_id, rev, remote, size, md5, sha256, \
             identity, stored_at, trashed_remote, trashed_at) \
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
         on conflict (source, destination, file_id) do update set rev = ?4, remote = ?5, \
             size = ?6, md5 = ?7, sha256 = ?8, identity = ?9, stored_at = ?10, \
             trashed_remote = ?11, trashed_at = ?12, last_error = null \
         where gdrive_copies.rev <= ?4",
    )
    .bind(source)
    .bind(&c.destination)
    .bind(&c.file_id)
    .bind(c.rev)
    .bind(&c.remote)
    .bind(c.size.map(|s| s as i64))
    .bind(&c.md5)
    .bind(&c.sha256)
    .bind(&c.identity)
    .bind(c.stored_at)
    .bind(&c.trashed_remote)
    .bind(c.trashed_at)
    .execute(&db.0)
    .await?;
    Ok(())
}

pub async fn record_error(
    db: &Db,
    source: &str,
    destination: &str,
    id: &str,
    error: &str,
) -> Result<(), sqlx::Error> {
    // A file never stored yet gets a row of rev 0 (still behind) to carry the error.
    sqlx::query(
        "insert into gdrive_copies (source, destination, file_id, rev, stored_at, last_error) \
         values (?1, ?2, ?3, 0, ?4, ?5) \
         on conflict (source, destination, file_id) do update set last_error = ?5",
    )
    .bind(source)
    .bind(destination)
    .bind(id)
    .bind(now_ms())
    .bind(error)
    .execute(&db.0)
    .await?;
    Ok(())
}

pub async fn keep(
    db: &Db,
    source: &str,
    destination: &str,
    remote: &str,
    kind: &str,
    file_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into gdrive_kept (source, destination, remote, kind, file_id, kept_at) \
         values (?, ?, ?, ?, ?, ?) on conflict do nothing",
    )
    .bind(source)
    .bind(destination)
    .bind(remote)
    .bind(kind)
    .bind(file_id)
    .bind(now_ms())
    .execute(&db.0)
    .await?;
    Ok(())
}

/// Kept objects: `kind` ones of one file (newest first), or trash older than `before`.
pub async fn kept(
    db: &Db,
    source: &str,
    destination: &str,
    kind: &str,
    file_id: Option<&str>,
    before: Option<i64>,
) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query(
        "select remote from gdrive_kept where source = ?1 and destination = ?2 and kind = ?3 \
             and (?4 is null or file_id = ?4) and (?5 is null or kept_at < ?5) \
         order by kept_at desc, remote desc",
    )
    .bind(source)
    .bind(destination)
    .bind(kind)
    .bind(file_id)
    .bind(before)
    .fetch_all(&db.1)
    .await?;
    rows.iter().map(|r| r.try_get("remote")).collect()
}

pub async fn forget_kept(
    db: &Db,
    source: &str,
    destination: &str,
    remote: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("delete from gdrive_kept where source = ? and destination = ? and remote = ?")
        .bind(source)
        .bind(destination)
        .bind(remote)
        .execute(&db.0)
        .await?;
    Ok(())
}

/// Per destination: files current, behind, and soft-deleted objects.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DestinationStatus {
    pub destination: String,
    pub current: i64,
    pub behind: i64,
    pub failing: i64,
    pub trashed: i64,
    pub bytes: i64,
}

pub async fn status(
    db: &Db,
    source: &str,
    destination: &str,
) -> Result<DestinationStatus, sqlx::Error> {
    let r = sqlx::query(
        "select \
           (select count(*) from gdrive_copies c join gdrive_files f using (source, file_id) \
              where c.source = ?1 and c.destination = ?2 and c.rev >= f.rev and c.remote is not null) as current, \
           (select coalesce(sum(c.size), 0) from gdrive_copies c where c.source = ?1 and c.destination = ?2 and c.remote is not null) as bytes, \
           (select count(*) from gdrive_copies c where c.source = ?1 and c.destination = ?2 and c.last_error is not null) as failing, \
           (select count(*) from gdrive_kept k where k.source = ?1 and k.destination = ?2 and k.kind = 'trash') as trashed",
    )
    .bind(source)
    .bind(destination)
    .fetch_one(&db.1)
    .await?;
    let behind: i64 = sqlx::query_scalar(&format!("select count(*) {BEHIND}"))
        .bind(source)
        .bind(destination)
        .fetch_one(&db.1)
        .await?;
    Ok(DestinationStatus {
        destination: destination.to_string(),
        current: r.try_get("current")?,
        behind,
        failing: r.try_get("failing")?,
        trashed: r.try_get("trashed")?,
        bytes: r.try_get("bytes")?,
    })
}

/// Files whose path (or name) contains `needle`, for "what do we have of this file".
pub async fn find(db: &Db, source: &str, needle: &str) -> Result<Vec<FileRow>, sqlx::Error> {
    sqlx::query(
        "select * from gdrive_files where source = ? and is_folder = 0 \
             and (instr(lower(coalesce(path, name)), lower(?)) > 0 or file_id = ?) \
         order by path limit 200",
    )
    .bind(source)
    .bind(needle)
    .bind(needle)
    .fetch_all(&db.1)
    .await?
    .iter()
    .map(file_row)
    .collect()
}

/// (files mirrored, files skipped) of a source, as of the last listing.
pub async fn counts(db: &Db, source: &str) -> Result<(i64, i64), sqlx::Error> {
    let r = sqlx::query(
        "select \
           coalesce(sum(case when path is not null then 1 else 0 end), 0) as mirrored, \
           coalesce(sum(case when skipped is not null then 1 else 0 end), 0) as skipped \
         from gdrive_files where source = ? and is_folder = 0 and removed = 0",
    )
    .bind(source)
    .fetch_one(&db.1)
    .await?;
    Ok((r.try_get("mirrored")?, r.try_get("skipped")?))
}
