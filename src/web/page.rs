//! The panel's HTML. Every value that reaches the page goes through `esc`; every link and form
//! starts with the ingress prefix.

use std::{collections::BTreeMap, fmt::Write};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use crate::{
    http::AppState,
    jobs::SNAPSHOTS,
    ops::DestinationView,
    queue::{
        JobState, Registry, scheduler,
        state::{Millis, to_datetime},
        store::{JobFilter, JobRecord, StoreError, UploadRecord},
    },
};

/// How many uploaded backups the page lists.
const UPLOADS_SHOWN: usize = 100;

pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Per-request rendering context.
pub struct Ctx<'a> {
    pub prefix: &'a str,
    pub csrf: &'a str,
    pub tz: Tz,
    pub now: DateTime<Utc>,
    /// The kinds, for what each job is about.
    pub registry: &'a Registry,
}

impl<'a> Ctx<'a> {
    pub fn new(state: &'a AppState, prefix: &'a str, csrf: &'a str) -> Self {
        Ctx {
            prefix,
            csrf,
            tz: state.config.timezone().parse().unwrap_or(Tz::UTC),
            now: Utc::now(),
            registry: &state.registry,
        }
    }

    /// What a job is about, in its kind's words.
    fn describe(&self, job: &JobRecord) -> String {
        self.registry.describe_job(job)
    }

    fn url(&self, path: &str) -> String {
        esc(&format!("{}{path}", self.prefix))
    }

    /// A POST form with just a button (and the CSRF field).
    fn button(&self, path: &str, label: &str, class: &str, extra: &str) -> String {
        format!(
            "<form method=post action=\"{}\" class=inline>{}<button type=submit class=\"{class}\"{extra}>{}</button></form>",
            self.url(path),
            self.csrf_field(),
            esc(label)
        )
    }

    fn csrf_field(&self) -> String {
        format!("<input type=hidden name=csrf value=\"{}\">", esc(self.csrf))
    }

    fn time(&self, t: DateTime<Utc>) -> String {
        let local = t.with_timezone(&self.tz);
        let same_year = local.format("%Y").to_string()
            == self.now.with_timezone(&self.tz).format("%Y").to_string();
        let shown = if same_year {
            local.format("%a %-d %b, %H:%M")
        } else {
            local.format("%-d %b %Y, %H:%M")
        };
        format!(
            "<time datetime=\"{}\" title=\"{}\">{} <span class=muted>({})</span></time>",
            t.to_rfc3339(),
            local.format("%Y-%m-%d %H:%M:%S %Z"),
            shown,
            relative(t, self.now)
        )
    }
}

/// In whole minutes, so a section does not change (and get re-rendered under the user's
/// pointer) every second.
fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (t - now).num_seconds();
    let span = duration(secs.unsigned_abs() / 60 * 60);
    if secs.abs() < 60 {
        if secs > 0 {
            "within a minute"
        } else {
            "just now"
        }
        .into()
    } else if secs > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// `40 s`, `3 min`, `2 h 5 min`, `3 days`.
pub fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86400 => {
            let m = (secs % 3600) / 60;
            if m == 0 {
                format!("{} h", secs / 3600)
            } else {
                format!("{} h {m} min", secs / 3600)
            }
        }
        86400..172800 => "1 day".into(),
        _ => format!("{} days", secs / 86400),
    }
}

/// `512 B`, `3.4 MiB`, `1.20 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    match u {
        0 => format!("{n} B"),
        _ if v < 10.0 => format!("{v:.2} {}", UNITS[u]),
        _ if v < 100.0 => format!("{v:.1} {}", UNITS[u]),
        _ => format!("{v:.0} {}", UNITS[u]),
    }
}

pub struct DestinationRow {
    pub view: DestinationView,
    /// A Dropbox destination (can be authorized from here).
    pub authorizable: bool,
    /// An authorization started here and waiting for its code.
    pub pending_url: Option<String>,
}

pub struct QueueRow {
    pub name: String,
    pub paused: bool,
    pub counts: BTreeMap<JobState, i64>,
}

/// One `[databases.<name>]` dump: its schedule and its last job.
pub struct DumpRow {
    pub name: String,
    pub schedule: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
    pub last: Option<JobRecord>,
    pub destination: String,
    pub external_path: String,
}

/// A device and whether its versions can be diffed as text.
pub struct DeviceRow {
    pub info: crate::ops::devices::DeviceInfo,
    pub diffable: bool,
}

/// A Google Drive source and an authorization started here, if any.
pub struct GoogleRow {
    pub info: crate::ops::google::GoogleSourceInfo,
    pub pending_url: Option<String>,
}

/// Everything the page shows, read in one go.
pub struct PanelData {
    /// `[google_drive.<name>]`, by name.
    pub google: Vec<GoogleRow>,
    pub destinations: Vec<DestinationRow>,
    /// The database dumps, by database name.
    pub dumps: Vec<DumpRow>,
    /// `[devices.<name>]`, by name.
    pub devices: Vec<DeviceRow>,
    pub backups_configured: bool,
    pub schedule: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
    pub last_upload: Option<UploadRecord>,
    pub last_result: Option<JobRecord>,
    pub running: Vec<JobRecord>,
    pub waiting: Vec<JobRecord>,
    pub problems: Vec<JobRecord>,
    pub uploads: Vec<UploadRecord>,
    pub queues: Vec<QueueRow>,
}

impl PanelData {
    pub async fn gather(state: &AppState) -> Result<PanelData, StoreError> {
        let store = &state.store;
        // Read once: the destinations, the last backup and the list all come from it.
        let all_uploads = store.uploads(None, true).await?;
        let mut destinations = Vec::new();
        for name in state.services.destination_names() {
            // Every name comes from the configured destinations, so the lookup cannot fail.
            let Ok(view) = crate::ops::destinations::view_from(&state.services, name, &all_uploads)
            else {
                continue;
            };
            let authorizable = crate::ops::authorization::authorizable(&state.services, name);
            destinations.push(DestinationRow {
                pending_url: crate::ops::authorization::pending_authorization(&state.auth, name)
                    .map(|p| p.url),
                authorizable,
                view,
            });
        }
        let schedules = scheduler::list(store).await?;
        let mut dumps = Vec::new();
        for (name, db) in &state.config.databases {
            let schedule_name = format!("{}{name}", crate::jobs::db_dump::SCHEDULE_PREFIX);
            let Some(s) = schedules
                .iter()
                .find(|s| s.record.def.name == schedule_name)
            else {
                continue;
            };
            let last = match s.record.last_job_id {
                Some(id) => store.job(id).await?,
                None => None,
            };
            dumps.push(DumpRow {
                name: name.clone(),
                schedule: s.spec.as_ref().map(|sp| sp.describe()),
                next_run: s.record.next_run_at.map(to_datetime),
                last,
                destination: db.destination.clone(),
                external_path: db.external_path.display().to_string(),
            });
        }
        let devices = crate::ops::devices::list(&state.config)
            .await
            .into_iter()
            .map(|info| DeviceRow {
                diffable: crate::ops::devices::diffable(&state.config, &info.name),
                info,
            })
            .collect();
        let google = match crate::ops::google::list(&state.services, store).await {
            Ok(all) => all,
            Err(crate::ops::OpsError::Store(e)) => return Err(e),
            Err(e) => {
                tracing::warn!("cannot read the Google Drive sync state: {e}");
                Vec::new()
            }
        }
        .into_iter()
        .map(|info| GoogleRow {
            pending_url: crate::ops::authorization::pending_authorization(&state.auth, &info.name)
                .map(|p| p.url),
            info,
        })
        .collect();
        let snapshots = schedules
            .into_iter()
            .find(|s| s.record.def.name == SNAPSHOTS && s.record.def.enabled);
        let backups_configured = snapshots.is_some();
        let (schedule, next_run) = match snapshots {
            Some(s) => (
                s.spec.map(|sp| sp.describe()),
                s.record.next_run_at.map(to_datetime),
            ),
            None => (None, None),
        };
        let jobs = |states: Vec<JobState>, limit: i64| {
            let filter = JobFilter {
                states,
                ..Default::default()
            };
            async move { store.list_jobs(&filter, limit, None).await }
        };
        let last_upload = all_uploads.iter().max_by_key(|u| u.uploaded_at).cloned();
        // Claimed ahead of a free slot is not running yet: a worker has not started it.
        let (mut running, claimed): (Vec<_>, Vec<_>) = jobs(vec![JobState::Running], 50)
            .await?
            .into_iter()
            .partition(|j| j.attempted_at.is_some());
        running.reverse();
        let mut waiting = jobs(vec![JobState::Available, JobState::Scheduled], 30).await?;
        waiting.extend(claimed);
        waiting.sort_by_key(|j| (j.scheduled_at, j.id));
        let problems = jobs(vec![JobState::Discarded, JobState::Retryable], 50).await?;
        let paused: BTreeMap<String, bool> = store
            .queues()
            .await?
            .into_iter()
            .map(|q| (q.name, q.paused))
            .collect();
        let mut queues: BTreeMap<String, QueueRow> = state
            .config
            .queue_names()
            .into_iter()
            .map(|name| {
                (
                    name.clone(),
                    QueueRow {
                        paused: paused.get(&name).copied().unwrap_or(false),
                        name,
                        counts: BTreeMap::new(),
                    },
                )
            })
            .collect();
        for (queue, st, n) in store.counts().await? {
            queues
                .entry(queue.clone())
                .or_insert_with(|| QueueRow {
                    paused: paused.get(&queue).copied().unwrap_or(false),
                    name: queue.clone(),
                    counts: BTreeMap::new(),
                })
                .counts
                .insert(st, n);
        }
        Ok(PanelData {
            google,
            destinations,
            dumps,
            devices,
            backups_configured,
            schedule,
            next_run,
            last_result: store.last_finished("snapshot_upload").await?,
            last_upload,
            running,
            waiting,
            problems,
            uploads: all_uploads
                .into_iter()
                .filter(|u| u.deleted_at.is_none())
                .take(UPLOADS_SHOWN)
                .collect(),
            queues: queues.into_values().collect(),
        })
    }
}

fn head(prefix: &str, title: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\">\
         <meta name=color-scheme content=\"light dark\">\
         <title>{}</title><link rel=stylesheet href=\"{}/panel/panel.css\"></head>",
        esc(title),
        esc(prefix)
    )
}

/// A page that only carries a message.
pub fn message_page(prefix: &str, title: &str, text: &str) -> String {
    format!(
        "{}<body><main class=narrow><h1>{}</h1><p role=alert>{}</p></main></body></html>",
        head(prefix, "offsite"),
        esc(title),
        esc(text)
    )
}

pub fn login(prefix: &str, csrf: &str, has_token: bool, error: Option<&str>) -> String {
    let mut out = head(prefix, "offsite · sign in");
    out.push_str("<body><main class=narrow><h1>offsite</h1>");
    if let Some(e) = error {
        let _ = write!(out, "<p class=\"flash error\" role=alert>{}</p>", esc(e));
    }
    if has_token {
        let _ = write!(
            out,
            "<form method=post action=\"{}/panel/login\" class=stack>\
             <input type=hidden name=csrf value=\"{}\">\
             <label for=token>API token (<code>api.token</code>, else the one kept in \
             <code>api-token</code> in the data directory; the start-up log prints a link \
             that signs you in)</label>\
             <input id=token name=token type=password autocomplete=current-password required>\
             <button type=submit class=primary>Sign in</button></form>",
            esc(prefix),
            esc(csrf)
        );
    } else {
        out.push_str(
            "<p>The panel is open only to a browser on this machine. To use it from elsewhere \
             (or through a reverse proxy), set <code>api.token</code> and sign in with it.</p>",
        );
    }
    out.push_str("</main></body></html>");
    out
}

/// The whole page.
pub fn index(c: &Ctx, d: &PanelData, flash: Option<(bool, String)>) -> String {
    let mut out = head(c.prefix, "offsite");
    let _ = write!(
        out,
        "<body data-sections=\"{}\"><header class=bar id=top><h1>offsite</h1>",
        c.url("/panel/sections")
    );
    if d.backups_configured {
        out.push_str(&c.button(
            "/panel/backup-now",
            "Back up now",
            "primary",
            " id=backup-now",
        ));
    }
    out.push_str("</header><main>");
    if let Some((ok, text)) = flash {
        let _ = write!(
            out,
            "<p class=\"flash {}\" role={} id=flash>{}</p>",
            if ok { "ok" } else { "error" },
            if ok { "status" } else { "alert" },
            esc(&text)
        );
    }
    for (id, html) in sections(c, d) {
        let _ = write!(out, "<section id={id} data-live>{html}</section>");
    }
    let _ = write!(
        out,
        "</main><p class=\"muted stale-note\">Live updates paused: offsite is not answering.</p>\
         <script src=\"{}/panel/panel.js\" defer></script></body></html>",
        esc(c.prefix)
    );
    out
}

/// The parts of the page that change while it is open, by element id.
pub fn sections(c: &Ctx, d: &PanelData) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("summary", summary(c, d)),
        ("destinations", destinations(c, d)),
    ];
    if !d.dumps.is_empty() {
        out.push(("dumps", dumps(c, d)));
    }
    if !d.devices.is_empty() {
        out.push(("devices", devices(c, d)));
    }
    if !d.google.is_empty() {
        out.push(("google", google(c, d)));
    }
    out.extend([
        ("activity", activity(c, d)),
        ("problems", problems(c, d)),
        ("uploads", uploads(c, d)),
    ]);
    out
}

/// The database dumps: schedule, next and last run, result, size, file, where; Dump now.
fn dumps(c: &Ctx, d: &PanelData) -> String {
    let mut out = String::from(
        "<h2>Database dumps</h2><table><thead><tr><th>Database</th><th>Schedule</th>\
         <th>Next</th><th>Last</th><th>Result</th><th>Size</th><th>File</th><th>Where</th>\
         <th></th></tr></thead><tbody>",
    );
    for row in &d.dumps {
        let last = row.last.as_ref();
        let finished = last.and_then(|j| millis(j.finalized_at));
        let result = match last.map(|j| j.state) {
            Some(JobState::Completed) => "success".to_string(),
            Some(JobState::Discarded) => "failed".to_string(),
            Some(s) => format!("{s:?}").to_lowercase(),
            None => "—".to_string(),
        };
        let size = last
            .and_then(|j| j.progress.as_ref()?.get("total")?.as_u64())
            .map_or_else(|| "—".to_string(), bytes);
        let file = last
            .and_then(|j| crate::jobs::db_dump::dump_file_of(j.checkpoint.clone()))
            .unwrap_or_default();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{} → {}</td><td>{}</td></tr>",
            esc(&row.name),
            esc(row.schedule.as_deref().unwrap_or("")),
            row.next_run.map_or_else(|| "—".to_string(), |t| c.time(t)),
            finished.map_or_else(|| "—".to_string(), |t| c.time(t)),
            esc(&result),
            esc(&size),
            esc(&file),
            esc(&row.external_path),
            esc(&row.destination),
            c.button(
                &format!("/panel/dumps/{}/run", enc(&row.name)),
                "Dump now",
                "",
                "",
            ),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// The Google Drive mirrors: authorized (or the steps to authorize), the last sync and its
/// error, files mirrored and skipped, and per destination what is current, behind, failing
/// and in the trash; Sync now.
fn google(c: &Ctx, d: &PanelData) -> String {
    let mut out = String::from("<h2>Google Drive</h2><ul class=list>");
    for row in &d.google {
        let g = &row.info;
        let badge = match (g.authorized, &g.last_error) {
            (false, _) => "<span class=\"badge bad\">Needs authorization</span>",
            (true, Some(_)) => "<span class=\"badge bad\">Failing</span>",
            (true, None) if g.last_sync_at.is_none() => "<span class=badge>Not synced yet</span>",
            (true, None) => "<span class=\"badge ok\">Mirrored</span>",
        };
        let last = g
            .last_sync_at
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| format!("last sync {}", c.time(t.with_timezone(&Utc))))
            .unwrap_or_else(|| "never synced".into());
        let _ = write!(
            out,
            "<li class=google data-google=\"{}\"><div class=line><strong>{}</strong> {badge} \
             <span class=muted>{} · {} files mirrored, {} skipped</span></div>",
            esc(&g.name),
            esc(&g.name),
            esc(&last),
            g.files,
            g.skipped,
        );
        if let Some(e) = &g.last_error {
            let _ = write!(out, "<div class=\"line bad\">{}</div>", esc(e));
        }
        out.push_str(
            "<table><thead><tr><th>Destination</th><th>Current</th><th>Behind</th>\
             <th>Failing</th><th>In trash</th><th>Stored</th></tr></thead><tbody>",
        );
        for dest in &g.destinations {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&dest.destination),
                dest.current,
                dest.behind,
                dest.failing,
                dest.trashed,
                esc(&bytes(dest.bytes.max(0) as u64)),
            );
        }
        out.push_str("</tbody></table><div class=line>");
        let auth = format!("/panel/destinations/{}/authorize", enc(&g.name));
        match &row.pending_url {
            Some(url) => {
                let _ = write!(
                    out,
                    "<ol class=steps><li><a class=\"button primary\" id=\"open-google-{}\" \
                     href=\"{}\" target=_blank rel=\"noopener noreferrer\">Open Google</a> \
                     and press <em>Allow</em>.</li>\
                     <li>The browser then ends on a page that cannot load \
                     (<code>http://127.0.0.1:8765/?code=…</code>): that is expected.</li>\
                     <li><form method=post action=\"{}\" class=row>{}\
                     <label for=\"code-{}\">Paste that page's whole address:</label>\
                     <input id=\"code-{}\" name=code autocomplete=off spellcheck=false required>\
                     <button type=submit class=primary>Finish</button></form></li></ol>\
                     <div class=\"line muted\">Link expired or lost? {}</div>",
                    esc(&g.name),
                    esc(url),
                    c.url(&format!("{auth}/code")),
                    c.csrf_field(),
                    esc(&g.name),
                    esc(&g.name),
                    c.button(&auth, "Start again", "link", ""),
                );
            }
            None => {
                out.push_str(&c.button(
                    &auth,
                    if g.authorized {
                        "Authorize again"
                    } else {
                        "Authorize"
                    },
                    if g.authorized { "" } else { "primary" },
                    "",
                ));
            }
        }
        if g.authorized {
            out.push_str(&c.button(
                &format!("/panel/google/{}/sync", enc(&g.name)),
                "Sync now",
                "primary",
                "",
            ));
        }
        out.push_str("</div></li>");
    }
    out.push_str("</ul>");
    out
}

/// The devices: type, last fetch and its result (a failing one marked, with since when),
/// last change, versions, firmware; Fetch now, Test connection; each version's download and
/// its changes against the one before.
fn devices(c: &Ctx, d: &PanelData) -> String {
    use crate::ops::devices::DeviceState;
    let mut out = String::from(
        "<h2>Devices</h2><table class=devices><thead><tr><th>Device</th><th>Type</th><th>Last fetch</th>\
         <th>Result</th><th>Last change</th><th>Versions</th><th>Firmware</th><th></th>\
         </tr></thead><tbody>",
    );
    for row in &d.devices {
        let info = &row.info;
        let state = info.state();
        let last = info.index.last_fetch.as_ref();
        let result = match state {
            DeviceState::Ok if last.is_some_and(|l| l.changed) => "ok (changed)".to_string(),
            DeviceState::Ok => "ok (unchanged)".to_string(),
            DeviceState::Waiting => "waiting (not fetched yet)".to_string(),
            DeviceState::WaitingForConfirmation => format!(
                "waiting for your confirmation on the device{} — confirm it there; offsite asks again",
                last.and_then(|l| l.waiting_since)
                    .map(|t| format!(" since {}", c.time(t)))
                    .unwrap_or_default()
            ),
            DeviceState::Failed => {
                let since = info
                    .index
                    .failing_since
                    .map(|t| format!(" — failing since {}", c.time(t)))
                    .unwrap_or_default();
                format!(
                    "<strong>failed</strong>{since}<br><span class=muted>{}</span>",
                    esc(last.and_then(|l| l.error.as_deref()).unwrap_or(""))
                )
            }
        };
        let result = if state == DeviceState::Failed {
            result
        } else {
            esc(&result)
        };
        let name = enc(&info.name);
        let _ = write!(
            out,
            "<tr class=\"device {}\" data-device=\"{}\"><td>{}</td><td>{}</td><td>{}</td>\
             <td class=result>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
            state.as_str(),
            esc(&info.name),
            esc(&info.name),
            esc(&info.kind),
            last.map_or_else(|| "—".to_string(), |l| c.time(l.at)),
            result,
            info.index
                .last_change
                .map_or_else(|| "—".to_string(), |t| c.time(t)),
            info.index.versions.len(),
            esc(info.firmware().unwrap_or("—")),
            c.button(&format!("/panel/devices/{name}/fetch"), "Fetch now", "", ""),
            c.button(
                &format!("/panel/devices/{name}/test"),
                "Test connection",
                "",
                ""
            ),
        );
        if !info.index.versions.is_empty() {
            let _ = write!(
                out,
                "<tr class=versions><td colspan=8><details><summary>Versions of {}</summary><ul>",
                esc(&info.name)
            );
            let mut previous: Option<&str> = None;
            for v in info.index.versions.iter() {
                let _ = write!(
                    out,
                    "<li><a href=\"{}\" download>{}</a> {} · {}{}",
                    c.url(&format!("/panel/devices/{name}/versions/{}", enc(&v.file))),
                    esc(&v.file),
                    c.time(v.fetched_at),
                    esc(&bytes(v.size)),
                    v.firmware
                        .as_deref()
                        .map(|f| format!(" · firmware {}", esc(f)))
                        .unwrap_or_default()
                );
                if let Some(p) = previous.filter(|_| row.diffable) {
                    let q: String = url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("from", p)
                        .append_pair("to", &v.file)
                        .finish();
                    let _ = write!(
                        out,
                        " · <a href=\"{}\">changes</a>",
                        c.url(&format!("/panel/devices/{name}/diff?{q}"))
                    );
                }
                out.push_str("</li>");
                previous = Some(&v.file);
            }
            out.push_str("</ul></details></td></tr>");
        }
    }
    out.push_str("</tbody></table>");
    out
}

/// The changes between two versions of a device's configuration (secrets masked), each line
/// escaped, removed and added lines marked.
pub fn device_diff(prefix: &str, device: &str, from: &str, to: &str, diff: &str) -> String {
    let mut out = head(prefix, &format!("offsite · {device} changes"));
    let _ = write!(
        out,
        "<body><main><p><a href=\"{}/#devices\">← back to the panel</a></p>\
         <h1>Changes of {}</h1><p>From <code>{}</code> to <code>{}</code> \
         (secrets masked)</p><pre class=diff>",
        esc(prefix),
        esc(device),
        esc(from),
        esc(to)
    );
    let mut changed = 0;
    for line in diff.lines() {
        let class = match line.chars().next() {
            Some('+') => "add",
            Some('-') => "del",
            _ => "same",
        };
        if class != "same" {
            changed += 1;
        }
        let _ = writeln!(out, "<span class={class}>{}</span>", esc(line));
    }
    out.push_str("</pre>");
    if changed == 0 {
        out.push_str("<p>No changes.</p>");
    }
    out.push_str("</main></body></html>");
    out
}

fn summary(c: &Ctx, d: &PanelData) -> String {
    let mut out = String::from("<div class=cards>");
    // Last backup.
    out.push_str("<div class=card><h2>Last backup</h2>");
    match &d.last_upload {
        Some(u) => {
            let _ = write!(
                out,
                "<p class=big>{}</p><p>{} → {}</p>",
                c.time(u.uploaded_at),
                esc(&u.backup_name),
                esc(&u.destination)
            );
        }
        None => out.push_str("<p class=big>None yet</p>"),
    }
    match &d.last_result {
        Some(j) if j.state == JobState::Completed => {
            out.push_str("<p><span class=\"badge ok\" id=last-result>Succeeded</span></p>");
        }
        Some(j) => {
            let _ = write!(
                out,
                "<p><span class=\"badge bad\" id=last-result>{}</span> {}</p>",
                if j.state == JobState::Discarded {
                    "Failed"
                } else {
                    "Cancelled"
                },
                esc(&c.describe(j))
            );
        }
        None => {}
    }
    out.push_str("</div>");
    // Next run.
    out.push_str("<div class=card><h2>Next backup</h2>");
    if d.backups_configured {
        match d.next_run {
            Some(t) => {
                let _ = write!(out, "<p class=big>{}</p>", c.time(t));
            }
            None => out.push_str("<p class=big>Not scheduled</p>"),
        }
        if let Some(s) = &d.schedule {
            let _ = write!(out, "<p class=muted>Schedule: {}</p>", esc(s));
        }
    } else {
        out.push_str(
            "<p>Backups are not set up yet. In Home Assistant, set the Dropbox app key in the \
             add-on's Configuration tab; standalone, configure <code>[snapshots]</code>.</p>",
        );
    }
    out.push_str("</div>");
    // Queue counts.
    out.push_str(
        "<div class=card><h2>Queues</h2><table class=counts><thead><tr><th>Queue</th>\
         <th title=\"Ready or running\">Active</th><th title=\"Scheduled or waiting to retry\">Waiting</th>\
         <th>Done</th><th>Failed</th></tr></thead><tbody>",
    );
    for q in &d.queues {
        let n =
            |states: &[JobState]| -> i64 { states.iter().filter_map(|s| q.counts.get(s)).sum() };
        let _ = write!(
            out,
            "<tr data-queue=\"{}\"><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&q.name),
            esc(&q.name),
            if q.paused {
                " <span class=\"badge warn\">paused</span>"
            } else {
                ""
            },
            n(&[JobState::Available, JobState::Running]),
            n(&[JobState::Scheduled, JobState::Retryable]),
            n(&[JobState::Completed]),
            n(&[JobState::Discarded]),
        );
    }
    out.push_str("</tbody></table></div></div>");
    out
}

fn destinations(c: &Ctx, d: &PanelData) -> String {
    let mut out = String::from("<h2>Destinations</h2>");
    if d.destinations.is_empty() {
        out.push_str("<p class=muted>No destination is configured.</p>");
        return out;
    }
    out.push_str("<ul class=list>");
    for row in &d.destinations {
        let v = &row.view;
        let _ = write!(
            out,
            "<li class=dest data-destination=\"{}\"><div class=line><strong>{}</strong> \
             <span class=muted>{} · {}</span> {}</div>\
             <div class=\"line muted\">{} stored{}</div>",
            esc(&v.name),
            esc(&v.name),
            esc(&v.kind),
            esc(&v.folder),
            if !row.authorizable {
                "<span class=\"badge ok\">Ready</span>"
            } else if v.authorized {
                "<span class=\"badge ok\">Authorized</span>"
            } else {
                "<span class=\"badge bad\">Needs authorization</span>"
            },
            match v.backups {
                1 => "1 backup".to_string(),
                n => format!("{n} backups"),
            },
            v.last_upload_at
                .map(|t| format!(", last upload {}", c.time(t)))
                .unwrap_or_default(),
        );
        if row.authorizable {
            let path = format!("/panel/destinations/{}/authorize", enc(&v.name));
            match &row.pending_url {
                Some(url) => {
                    let _ = write!(
                        out,
                        "<ol class=steps><li><a class=\"button primary\" id=\"open-dropbox\" \
                         href=\"{}\" target=_blank rel=\"noopener noreferrer\">Open Dropbox</a> \
                         and press <em>Allow</em>.</li>\
                         <li><form method=post action=\"{}\" class=row>{}\
                         <label for=\"code-{}\">Then paste the code Dropbox shows:</label>\
                         <input id=\"code-{}\" name=code autocomplete=off spellcheck=false required>\
                         <button type=submit class=primary>Finish</button></form></li></ol>\
                         <div class=\"line muted\">Link expired or lost? {}</div>",
                        esc(url),
                        c.url(&format!("{path}/code")),
                        c.csrf_field(),
                        esc(&v.name),
                        esc(&v.name),
                        c.button(&path, "Start again", "link", ""),
                    );
                }
                None => {
                    out.push_str(&c.button(
                        &path,
                        if v.authorized {
                            "Authorize again"
                        } else {
                            "Authorize"
                        },
                        if v.authorized { "" } else { "primary" },
                        "",
                    ));
                }
            }
        }
        out.push_str("</li>");
    }
    out.push_str("</ul>");
    out
}

/// For path segments in our own URLs.
fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn progress(p: &Value) -> String {
    let num = |k: &str| p.get(k).and_then(Value::as_f64);
    let done = num("done").unwrap_or(0.0).max(0.0) as u64;
    let total = num("total").map(|t| t.max(0.0) as u64);
    let is_bytes = p
        .get("unit")
        .and_then(Value::as_str)
        .is_none_or(|u| u == "bytes");
    let amount = |n: u64| if is_bytes { bytes(n) } else { n.to_string() };
    let mut text = match total {
        Some(t) if t > 0 => format!(
            "{} of {} ({}%)",
            amount(done),
            amount(t),
            (done as f64 * 100.0 / t as f64).floor()
        ),
        _ => amount(done),
    };
    if let Some(rate) = num("rate_per_sec").filter(|r| *r > 0.0) {
        let _ = write!(
            text,
            " · {}/s",
            if is_bytes {
                bytes(rate as u64)
            } else {
                format!("{rate:.0}")
            }
        );
    }
    if let Some(eta) = num("eta_secs") {
        let _ = write!(text, " · about {} left", duration(eta as u64));
    }
    let bar = match total {
        Some(t) if t > 0 => format!(
            "<progress value=\"{done}\" max=\"{t}\" aria-label=\"upload progress\"></progress>"
        ),
        _ => "<progress aria-label=\"working\"></progress>".into(),
    };
    format!(
        "{bar}<div class=\"muted progress-text\">{}</div>",
        esc(&text)
    )
}

fn activity(c: &Ctx, d: &PanelData) -> String {
    let mut out = String::from("<h2>Activity</h2>");
    if d.running.is_empty() && d.waiting.is_empty() {
        out.push_str("<p class=muted id=idle>Nothing is running.</p>");
        return out;
    }
    out.push_str("<ul class=list>");
    for j in &d.running {
        let _ = write!(
            out,
            "<li class=job data-job=\"{}\" data-state=running><div class=line>\
             <span class=\"badge run\">Running</span> <strong>{}</strong> \
             <span class=muted>job {} · attempt {}</span></div>{}</li>",
            j.id,
            esc(&c.describe(j)),
            j.id,
            j.attempt,
            j.progress
                .as_ref()
                .map(progress)
                .unwrap_or_else(|| "<progress aria-label=\"starting\"></progress>".into()),
        );
    }
    for j in &d.waiting {
        let when = to_datetime(j.scheduled_at);
        let status = if when <= c.now {
            "Ready".to_string()
        } else {
            format!("Waiting until {}", c.time(when))
        };
        let _ = write!(
            out,
            "<li class=job data-job=\"{}\" data-state=\"{}\"><div class=line>\
             <span class=\"badge\">{}</span> <strong>{}</strong> <span class=muted>job {}</span></div>{}</li>",
            j.id,
            // `running` but not started: claimed ahead of a free slot.
            if j.state == JobState::Running {
                "claimed"
            } else {
                j.state.as_str()
            },
            if matches!(j.state, JobState::Available | JobState::Running) {
                "Queued"
            } else {
                "Waiting"
            },
            esc(&c.describe(j)),
            j.id,
            match &j.last_error {
                Some(why) if j.state == JobState::Scheduled =>
                    format!("<div class=\"line muted\">{status}: {}</div>", esc(why)),
                _ => format!("<div class=\"line muted\">{status}</div>"),
            }
        );
    }
    out.push_str("</ul>");
    out
}

fn millis(t: Option<Millis>) -> Option<DateTime<Utc>> {
    t.map(to_datetime)
}

fn problems(c: &Ctx, d: &PanelData) -> String {
    let mut out = String::from("<h2>Problems</h2>");
    if d.problems.is_empty() {
        out.push_str("<p class=muted id=no-problems>No failed jobs.</p>");
        return out;
    }
    out.push_str("<ul class=list>");
    for j in &d.problems {
        let discarded = j.state == JobState::Discarded;
        let _ = write!(
            out,
            "<li class=\"job problem\" data-job=\"{}\" data-state=\"{}\"><div class=line>\
             <span class=\"badge {}\">{}</span> <strong>{}</strong> \
             <span class=muted>job {} · attempt {} of {}</span></div>\
             <div class=\"line error-text\">{}</div><div class=\"line muted\">{}</div>{}</li>",
            j.id,
            j.state.as_str(),
            if discarded { "bad" } else { "warn" },
            if discarded { "Failed" } else { "Will retry" },
            esc(&c.describe(j)),
            j.id,
            j.attempt,
            j.max_attempts,
            esc(j.last_error.as_deref().unwrap_or("no error recorded")),
            if discarded {
                millis(j.finalized_at)
                    .map(|t| format!("Gave up {}", c.time(t)))
                    .unwrap_or_default()
            } else {
                format!("Next try {}", c.time(to_datetime(j.scheduled_at)))
            },
            c.button(
                &format!("/panel/jobs/{}/retry", j.id),
                if discarded { "Retry" } else { "Retry now" },
                "primary",
                &format!(" data-retry=\"{}\"", j.id),
            ),
        );
    }
    out.push_str("</ul>");
    out
}

fn uploads(c: &Ctx, d: &PanelData) -> String {
    let mut out = String::from("<h2>Uploaded backups</h2>");
    if d.uploads.is_empty() {
        out.push_str("<p class=muted id=no-uploads>Nothing uploaded yet.</p>");
        return out;
    }
    out.push_str(
        "<table class=uploads><thead><tr><th>Name</th><th>Date</th><th>Size</th>\
         <th>Destination</th><th>Remote path</th></tr></thead><tbody>",
    );
    for u in &d.uploads {
        let _ = write!(
            out,
            "<tr data-backup=\"{}\"><td data-label=Name>{}</td><td data-label=Date>{}</td>\
             <td data-label=Size>{}</td><td data-label=Destination>{}</td>\
             <td data-label=\"Remote path\"><code>{}</code></td></tr>",
            esc(&u.backup_slug),
            esc(&u.backup_name),
            c.time(u.backup_date),
            bytes(u.size.max(0) as u64),
            esc(&u.destination),
            esc(&u.remote_path),
        );
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_attributes_and_text() {
        assert_eq!(
            esc("<a href=\"x\" onclick='y'>&</a>"),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn sizes_and_durations_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 + 400 * 1024), "3.39 MiB");
        assert_eq!(bytes(1536 * 1024 * 1024), "1.50 GiB");
        assert_eq!(duration(42), "42 s");
        assert_eq!(duration(3 * 3600 + 300), "3 h 5 min");
    }

    #[test]
    fn progress_shows_amount_speed_and_eta() {
        let html = progress(&serde_json::json!({
            "done": 50u64 << 20, "total": 200u64 << 20, "unit": "bytes",
            "rate_per_sec": 10u64 << 20, "eta_secs": 15
        }));
        assert!(
            html.contains("value=\"52428800\" max=\"209715200\""),
            "{html}"
        );
        assert!(
            html.contains("50.0 MiB of 200 MiB (25%) · 10.0 MiB/s · about 15 s left"),
            "{html}"
        );
    }
}
