//! Home Assistant add-on mode: the options the user sets in the add-on's Configuration tab
//! (`/data/options.json`) mapped onto the same typed configuration, with the same validation.
//! The option names of the original add-on design are kept.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{Config, ConfigError};

/// Where the Supervisor puts the options.
pub const OPTIONS_FILE: &str = "/data/options.json";
/// Home Assistant's ingress proxy: the only client allowed to reach the panel port.
pub const INGRESS_PROXY: &str = "172.30.32.2";

/// `/data/options.json`, as the add-on's `config.yaml` schema defines it. Numbers are read
/// wide and checked against the schema's bounds here, so a value out of range is named by its
/// option instead of failing deep inside.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddonOptions {
    #[serde(default)]
    pub dropbox_app_key: String,
    #[serde(default)]
    pub dropbox_app_secret: Option<String>,
    pub backup_interval_hours: u64,
    pub max_backups_in_dropbox: u64,
    pub dropbox_backup_path: String,
    #[serde(default)]
    pub keep_daily: u64,
    #[serde(default)]
    pub keep_weekly: u64,
    #[serde(default)]
    pub keep_monthly: u64,
    #[serde(default)]
    pub keep_yearly: u64,
    #[serde(default)]
    pub upload_limit_bytes_per_second: u64,
    /// `list(4|8|…|148)` in the schema: the Supervisor stores the choice as a string.
    #[serde(
        default = "crate::config::default_chunk_mib",
        deserialize_with = "number_or_numeral"
    )]
    pub chunk_mib: u64,
    #[serde(default = "default_log")]
    pub log_level: String,
    /// The PostgreSQL dump (FR-011): off unless turned on.
    #[serde(default)]
    pub database_backup: bool,
    #[serde(default)]
    pub database_host: Option<String>,
    #[serde(default = "default_pg_port")]
    pub database_port: u64,
    #[serde(default)]
    pub database_name: Option<String>,
    #[serde(default)]
    pub database_user: Option<String>,
    #[serde(default)]
    pub database_password: Option<String>,
    /// `- list(Mon|…|Sun)` in the schema: a multi-select.
    #[serde(default)]
    pub backup_schedule_days: Vec<String>,
    /// `list(00:00|00:15|…|23:45)` in the schema.
    #[serde(default = "default_backup_time")]
    pub backup_schedule_time: String,
    #[serde(default)]
    pub backup_timezone: Option<String>,
    #[serde(default = "default_external_path")]
    pub backup_external_path: String,
    #[serde(default = "yes")]
    pub backup_require_mount: bool,
    #[serde(default)]
    pub backup_sharepoint_tenant_id: Option<String>,
    #[serde(default)]
    pub backup_sharepoint_client_id: Option<String>,
    #[serde(default)]
    pub backup_sharepoint_client_secret: Option<String>,
    #[serde(default)]
    pub backup_sharepoint_site: Option<String>,
    #[serde(default)]
    pub backup_sharepoint_library: Option<String>,
    #[serde(default)]
    pub backup_sharepoint_folder: Option<String>,
    /// Network devices whose configuration is backed up (`[devices.<name>]`).
    #[serde(default)]
    pub devices: Vec<AddonDevice>,
}

/// One item of the `devices` option.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddonDevice {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub host: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default = "default_device_hours")]
    pub schedule_hours: u64,
    #[serde(default = "default_device_keep")]
    pub keep: u64,
}

fn default_device_hours() -> u64 {
    24
}

fn default_device_keep() -> u64 {
    10
}

/// A `devices.<name>.<field>` key as the add-on option the user wrote (`devices[2].host`).
fn device_option(key: &str, devices: &[AddonDevice]) -> Option<String> {
    let rest = key.strip_prefix("devices.")?;
    let (name, field) = rest.split_once('.').unwrap_or((rest, "name"));
    let i = devices.iter().position(|d| d.name.trim() == name)?;
    let field = match field {
        "type" | "host" | "username" | "password" | "keep" | "name" => field,
        "schedule" => "schedule_hours",
        _ => return Some(format!("devices[{i}]")),
    };
    Some(format!("devices[{i}].{field}"))
}

fn default_pg_port() -> u64 {
    5432
}
fn default_backup_time() -> String {
    "02:00".into()
}
fn default_external_path() -> String {
    "/media/backup".into()
}
fn yes() -> bool {
    true
}

fn default_log() -> String {
    "info".into()
}

fn number_or_numeral<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Number(u64),
        Numeral(String),
    }
    match Either::deserialize(d)? {
        Either::Number(n) => Ok(n),
        Either::Numeral(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a whole number"))),
    }
}

/// The log levels the schema offers.
const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

/// Where each option ends up in the configuration, to name the option in any message about
/// that key.
const OPTION_OF_KEY: &[(&str, &str)] = &[
    ("destinations.dropbox.app_key", "dropbox_app_key"),
    ("destinations.dropbox.app_secret", "dropbox_app_secret"),
    ("destinations.dropbox.path", "dropbox_backup_path"),
    ("destinations.dropbox.chunk_mib", "chunk_mib"),
    ("destinations.dropbox.max_backups", "max_backups_in_dropbox"),
    ("destinations.dropbox.keep_daily", "keep_daily"),
    ("destinations.dropbox.keep_weekly", "keep_weekly"),
    ("destinations.dropbox.keep_monthly", "keep_monthly"),
    ("destinations.dropbox.keep_yearly", "keep_yearly"),
    (
        "destinations.dropbox.throttle_bytes_per_sec",
        "upload_limit_bytes_per_second",
    ),
    ("snapshots.schedule", "backup_interval_hours"),
    ("log.level", "log_level"),
    ("databases.backup.days", "backup_schedule_days"),
    ("databases.backup.time", "backup_schedule_time"),
    ("databases.backup.timezone", "backup_timezone"),
    ("databases.backup.external_path", "backup_external_path"),
    ("databases.backup.host", "database_host"),
    ("databases.backup.port", "database_port"),
    ("databases.backup.database", "database_name"),
    ("databases.backup.user", "database_user"),
    ("databases.backup.password", "database_password"),
    ("databases.backup", "database_backup"),
    (
        "destinations.sharepoint.tenant_id",
        "backup_sharepoint_tenant_id",
    ),
    (
        "destinations.sharepoint.client_id",
        "backup_sharepoint_client_id",
    ),
    (
        "destinations.sharepoint.client_secret",
        "backup_sharepoint_client_secret",
    ),
    ("destinations.sharepoint.site", "backup_sharepoint_site"),
    (
        "destinations.sharepoint.library",
        "backup_sharepoint_library",
    ),
    ("destinations.sharepoint.folder", "backup_sharepoint_folder"),
    ("destinations.sharepoint", "backup_sharepoint_site"),
];

fn option_of(key: &str) -> Option<&'static str> {
    OPTION_OF_KEY
        .iter()
        .find(|(k, _)| key == *k || key.starts_with(&format!("{k}.")))
        .map(|(_, option)| *option)
}

/// A Dropbox folder: `/name` segments, none empty (`//`), none starting or ending with a space,
/// no control characters, at most one trailing slash. The schema's `match(...)` pattern says the
/// same.
fn dropbox_folder(path: &str) -> Result<&str, &'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("must start with '/', e.g. /HomeAssistant/Backups");
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(
            "name a folder below the root, e.g. /HomeAssistant/Backups (the app folder itself cannot be used)",
        );
    }
    for segment in rest.split('/') {
        if segment.is_empty() {
            return Err("has an empty folder name ('//')");
        }
        if segment.starts_with(' ') || segment.ends_with(' ') {
            return Err("has a folder name that starts or ends with a space");
        }
        if segment.chars().any(char::is_control) {
            return Err("contains a control character");
        }
    }
    Ok(path.strip_suffix('/').unwrap_or(path))
}

/// The options file to use: `OFFSITE_OPTIONS`, else `/data/options.json` when running under the
/// Supervisor (it sets `SUPERVISOR_TOKEN`).
pub fn options_file() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("OFFSITE_OPTIONS") {
        return Some(p.into());
    }
    let default = Path::new(OPTIONS_FILE);
    (std::env::var_os("SUPERVISOR_TOKEN").is_some() && default.is_file()).then(|| default.into())
}

fn table(entries: impl IntoIterator<Item = (&'static str, toml::Value)>) -> toml::Value {
    toml::Value::Table(
        entries
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    )
}

fn string(s: impl Into<String>) -> toml::Value {
    toml::Value::String(s.into())
}

/// A number already checked against its range (all of which fit TOML's i64).
fn int(n: u64) -> toml::Value {
    toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Reads the options and builds the configuration (data in `data_dir`, normally `/data`).
/// Every message names the add-on option to change, never an internal key.
pub fn load(options: &Path, data_dir: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(options)
        .map_err(|e| ConfigError::new(format!("cannot read: {e}")).in_file(options))?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    let o: AddonOptions = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::at(
            if key == "." { String::new() } else { key },
            e.into_inner().to_string(),
        )
        .in_file(options)
    })?;
    let bad = |key: &str, msg: &str| Err(ConfigError::at(key, msg).in_file(options));
    // The schema in offsite/config.yaml says the same (`int(MIN,MAX)`); a test holds the two
    // together. All fit TOML's integers.
    let ranges = [
        ("backup_interval_hours", o.backup_interval_hours, 1, 8760),
        (
            "max_backups_in_dropbox",
            o.max_backups_in_dropbox,
            0,
            10_000,
        ),
        ("keep_daily", o.keep_daily, 0, 3660),
        ("keep_weekly", o.keep_weekly, 0, 520),
        ("keep_monthly", o.keep_monthly, 0, 1200),
        ("keep_yearly", o.keep_yearly, 0, 100),
        (
            "upload_limit_bytes_per_second",
            o.upload_limit_bytes_per_second,
            0,
            10_000_000_000,
        ),
    ];
    for (name, value, min, max) in ranges {
        if !(min..=max).contains(&value) {
            return bad(name, &format!("must be from {min} to {max}"));
        }
    }
    if o.chunk_mib == 0 || !o.chunk_mib.is_multiple_of(4) || o.chunk_mib > 148 {
        return bad("chunk_mib", "must be a multiple of 4 from 4 to 148");
    }
    if !LOG_LEVELS.contains(&o.log_level.as_str()) {
        return bad(
            "log_level",
            &format!("must be one of {}", LOG_LEVELS.join(", ")),
        );
    }
    // The Supervisor's `match` (Python's `$`) also accepts a value with one final newline.
    let written = &o.dropbox_backup_path;
    let path = match dropbox_folder(written.strip_suffix('\n').unwrap_or(written)) {
        Ok(path) => path,
        Err(why) => return bad("dropbox_backup_path", why),
    };

    let app_key = o.dropbox_app_key.trim();
    let dropbox = !app_key.is_empty();
    let mut destinations = toml::Table::new();
    if dropbox {
        let mut d = toml::Table::new();
        d.insert("type".into(), string("dropbox"));
        d.insert("path".into(), string(path));
        d.insert("app_key".into(), string(app_key));
        d.insert("chunk_mib".into(), int(o.chunk_mib));
        d.insert("max_backups".into(), int(o.max_backups_in_dropbox));
        d.insert("keep_daily".into(), int(o.keep_daily));
        d.insert("keep_weekly".into(), int(o.keep_weekly));
        d.insert("keep_monthly".into(), int(o.keep_monthly));
        d.insert("keep_yearly".into(), int(o.keep_yearly));
        d.insert(
            "throttle_bytes_per_sec".into(),
            int(o.upload_limit_bytes_per_second),
        );
        if let Some(secret) = o
            .dropbox_app_secret
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            d.insert("app_secret".into(), string(secret));
        }
        destinations.insert("dropbox".into(), toml::Value::Table(d));
    }
    let mut databases = toml::Table::new();
    if o.database_backup {
        let given = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        if !(1..=65535).contains(&o.database_port) {
            return bad("database_port", "must be from 1 to 65535");
        }
        if o.backup_schedule_days.is_empty() {
            return bad("backup_schedule_days", "choose at least one weekday");
        }
        let path = o.backup_external_path.trim();
        if !path.starts_with('/') {
            return bad(
                "backup_external_path",
                "must be an absolute path, e.g. /media/backup",
            );
        }
        let sharepoint = [
            ("tenant_id", &o.backup_sharepoint_tenant_id),
            ("client_id", &o.backup_sharepoint_client_id),
            ("client_secret", &o.backup_sharepoint_client_secret),
            ("site", &o.backup_sharepoint_site),
            ("library", &o.backup_sharepoint_library),
            ("folder", &o.backup_sharepoint_folder),
        ];
        let destination = if sharepoint.iter().any(|(_, v)| given(v).is_some()) {
            let mut d = toml::Table::new();
            d.insert("type".into(), string("sharepoint"));
            for (key, v) in sharepoint {
                if let Some(v) = given(v) {
                    d.insert(key.into(), string(v));
                }
            }
            destinations.insert("sharepoint".into(), toml::Value::Table(d));
            "sharepoint"
        } else if dropbox {
            "dropbox"
        } else {
            return bad(
                "database_backup",
                "say where the dumps go: the SharePoint fields (or a Dropbox app key)",
            );
        };
        let mut db = toml::Table::new();
        for (key, v) in [
            ("host", &o.database_host),
            ("database", &o.database_name),
            ("user", &o.database_user),
            ("password", &o.database_password),
        ] {
            if let Some(v) = given(v) {
                db.insert(key.into(), string(v));
            }
        }
        db.insert("port".into(), int(o.database_port));
        db.insert(
            "days".into(),
            toml::Value::Array(o.backup_schedule_days.iter().map(string).collect()),
        );
        db.insert("time".into(), string(o.backup_schedule_time.trim()));
        if let Some(tz) = given(&o.backup_timezone) {
            db.insert("timezone".into(), string(tz));
        }
        db.insert("external_path".into(), string(path));
        db.insert(
            "require_mount".into(),
            toml::Value::Boolean(o.backup_require_mount),
        );
        db.insert("destination".into(), string(destination));
        databases.insert(
            crate::sources::postgres::ENV_DATABASE.into(),
            toml::Value::Table(db),
        );
    }
    let mut devices = toml::Table::new();
    for (i, d) in o.devices.iter().enumerate() {
        let name = d.name.trim();
        if devices.contains_key(name) {
            return bad(
                &format!("devices[{i}].name"),
                &format!("another device is already named {name:?}"),
            );
        }
        if !(1..=8760).contains(&d.schedule_hours) {
            return bad(
                &format!("devices[{i}].schedule_hours"),
                "must be from 1 to 8760",
            );
        }
        if !(1..=1000).contains(&d.keep) {
            return bad(&format!("devices[{i}].keep"), "must be from 1 to 1000");
        }
        let mut t = toml::Table::new();
        t.insert("type".into(), string(d.kind.trim()));
        t.insert("host".into(), string(d.host.trim()));
        let given = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        if let Some(u) = given(&d.username) {
            t.insert("username".into(), string(u));
        }
        if let Some(p) = d.password.as_deref().filter(|p| !p.is_empty()) {
            t.insert("password".into(), string(p));
        }
        t.insert(
            "schedule".into(),
            table([("every", string(format!("{}h", d.schedule_hours)))]),
        );
        t.insert("keep".into(), int(d.keep));
        devices.insert(name.to_string(), toml::Value::Table(t));
    }
    let overlay = table([
        ("data_dir", string(data_dir.display().to_string())),
        (
            "jobs_dir",
            string(data_dir.join("jobs").display().to_string()),
        ),
        (
            "api",
            table([
                ("listen", string("0.0.0.0:8099")),
                (
                    "allow_from",
                    toml::Value::Array(vec![string(INGRESS_PROXY)]),
                ),
            ]),
        ),
        ("log", table([("level", string(o.log_level.as_str()))])),
        (
            "homeassistant",
            table([("enabled", toml::Value::Boolean(true))]),
        ),
        (
            "sources",
            table([("ha", table([("type", string("supervisor"))]))]),
        ),
        ("destinations", toml::Value::Table(destinations)),
        ("databases", toml::Value::Table(databases)),
        ("devices", toml::Value::Table(devices)),
        (
            "snapshots",
            table([
                ("enabled", toml::Value::Boolean(dropbox)),
                ("source", string("ha")),
                (
                    "destinations",
                    toml::Value::Array(if dropbox {
                        vec![string("dropbox")]
                    } else {
                        vec![]
                    }),
                ),
                ("scan_on_start", toml::Value::Boolean(true)),
                (
                    "schedule",
                    table([("every", string(format!("{}h", o.backup_interval_hours)))]),
                ),
            ]),
        ),
    ]);
    let overlay = toml::to_string(&overlay).expect("a table renders as TOML");
    let mut config = Config::from_overlay(&overlay).map_err(|e| {
        // Name the add-on option the user can change, not our internal key.
        let key = e.key.as_deref().map(|k| {
            device_option(k, &o.devices)
                .or_else(|| option_of(k).map(str::to_string))
                .unwrap_or_else(|| k.to_string())
        });
        ConfigError {
            key,
            file: None,
            line: None,
            ..e
        }
        .in_file(options)
    })?;
    config.source = Some(options.to_path_buf());
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, json: &str) -> PathBuf {
        let p = dir.join("options.json");
        std::fs::write(&p, json).unwrap();
        p
    }

    const SEED: &str = r#"{"dropbox_app_key": "abc123", "dropbox_app_secret": "", "backup_interval_hours": 12,
        "max_backups_in_dropbox": 5, "dropbox_backup_path": "/HomeAssistant/Backups/"}"#;

    #[test]
    fn seed_options_map_onto_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let c = load(&write(dir.path(), SEED), Path::new("/data")).unwrap();
        assert_eq!(c.data_dir, Path::new("/data"));
        let d = &c.destinations["dropbox"];
        let crate::config::DestinationKind::Dropbox(dropbox) = &d.kind else {
            panic!("the add-on's destination is Dropbox")
        };
        assert_eq!(dropbox.app_key, "abc123");
        assert!(
            dropbox.app_secret.is_none(),
            "an empty secret means PKCE without one"
        );
        assert_eq!(dropbox.path, "/HomeAssistant/Backups");
        assert_eq!(d.max_backups, 5);
        let s = c.snapshots.as_ref().unwrap();
        assert!(s.enabled);
        assert_eq!(s.destinations, vec!["dropbox"]);
        assert_eq!(
            c.api.allow_from,
            vec![INGRESS_PROXY.parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(matches!(
            c.sources["ha"],
            crate::config::SourceConfig::Supervisor { .. }
        ));
        let ha = c
            .homeassistant
            .as_ref()
            .expect("Home Assistant integration");
        assert!(ha.enabled);
        assert_eq!(ha.url, "http://supervisor/core/api");
    }

    #[test]
    fn bad_options_name_the_option_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &SEED.replace("12,", "\"twelve\","));
        let e = load(&p, Path::new("/data")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("backup_interval_hours"));
        assert!(e.file.unwrap().ends_with("options.json"));
        let e = load(
            &write(
                dir.path(),
                &SEED.replace("/HomeAssistant/Backups/", "Backups"),
            ),
            Path::new("/data"),
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("dropbox_backup_path"));
        let e = load(
            &write(
                dir.path(),
                &SEED.replace("\"abc123\",", "\"abc123\", \"surprise\": 1,"),
            ),
            Path::new("/data"),
        )
        .unwrap_err();
        assert!(e.message.contains("surprise"), "{e}");
    }

    #[test]
    fn without_an_app_key_nothing_is_uploaded_yet() {
        let dir = tempfile::tempdir().unwrap();
        let c = load(
            &write(dir.path(), &SEED.replace("abc123", "")),
            Path::new("/data"),
        )
        .unwrap();
        assert!(c.destinations.is_empty());
        assert!(!c.snapshots.unwrap().enabled);
    }

    #[test]
    fn a_bad_chunk_size_names_the_option() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(
            &write(dir.path(), &SEED.replace("12,", "12, \"chunk_mib\": 10,")),
            Path::new("/data"),
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("chunk_mib"), "{e}");
        assert!(e.file.unwrap().ends_with("options.json"));
    }

    #[test]
    fn database_dump_options_map_onto_a_database_and_a_bad_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let base = r#""backup_interval_hours":24,"max_backups_in_dropbox":10,"dropbox_backup_path":"/HomeAssistant/Backups","database_backup":true"#;
        let with = |extra: &str| write(dir.path(), &format!("{{{base}{extra}}}"));
        let p = with(
            r#","dropbox_app_key":"abc123","database_host":"db.local","database_name":"app","database_user":"u","database_password":"pw-secret-123456","backup_schedule_days":["Mon","Fri"],"backup_schedule_time":"03:45","backup_timezone":"Europe/Berlin","backup_external_path":"/media/usb""#,
        );
        let c = load(&p, dir.path()).unwrap();
        let db = &c.databases[crate::sources::postgres::ENV_DATABASE];
        assert_eq!(db.days, ["Mon", "Fri"]);
        assert_eq!(db.time, "03:45");
        assert_eq!(db.timezone.as_deref(), Some("Europe/Berlin"));
        assert_eq!(db.external_path, Path::new("/media/usb"));
        assert_eq!(
            db.destination, "dropbox",
            "no SharePoint fields: the Dropbox destination"
        );
        assert!(db.require_mount);
        assert_eq!(
            (db.host.as_deref(), db.port),
            (Some("db.local"), Some(5432))
        );
        assert_eq!(
            db.password.as_ref().map(|p| p.expose()),
            Some("pw-secret-123456")
        );

        let e = load(
            &with(r#","dropbox_app_key":"abc123","backup_schedule_days":["Mon"],"backup_external_path":"media/usb""#),
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("backup_external_path"), "{e}");
        let e = load(&with(r#","backup_schedule_days":["Mon"]"#), dir.path()).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("database_backup"), "{e}");
        let e = load(
            &with(r#","dropbox_app_key":"abc123","backup_schedule_days":["Mon"],"backup_timezone":"Mars/Base""#),
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("backup_timezone"), "{e}");
    }

    #[test]
    fn devices_map_onto_device_sections_and_a_bad_one_names_its_item() {
        let dir = tempfile::tempdir().unwrap();
        let with = |devices: &str| {
            SEED.replace(
                "\"max_backups_in_dropbox\"",
                &format!("\"devices\": {devices}, \"max_backups_in_dropbox\""),
            )
        };
        let ok = with(
            r#"[{"name": "kitchen", "type": "wled", "host": "10.0.0.5", "schedule_hours": 6, "keep": 3},
                {"name": "hall", "type": "shelly_gen1", "host": "hall.local", "username": "admin", "password": "pw", "schedule_hours": 24, "keep": 10}]"#,
        );
        let c = load(&write(dir.path(), &ok), Path::new("/data")).unwrap();
        let k = &c.devices["kitchen"];
        assert_eq!(
            (k.kind.as_str(), k.host.as_deref(), k.keep),
            ("wled", Some("10.0.0.5"), 3)
        );
        assert!(k.password.is_none());
        let h = &c.devices["hall"];
        assert_eq!(h.username.as_deref(), Some("admin"));
        assert_eq!(h.password.as_ref().map(|p| p.expose()), Some("pw"));
        let bad = with(
            r#"[{"name": "kitchen", "type": "wled", "host": "10.0.0.5", "schedule_hours": 6, "keep": 3},
                {"name": "hall", "type": "shelly_gen1", "host": "a b", "schedule_hours": 24, "keep": 10}]"#,
        );
        let e = load(&write(dir.path(), &bad), Path::new("/data")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("devices[1].host"), "{e}");
    }
}
