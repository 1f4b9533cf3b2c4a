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

/// `/data/options.json`, as the add-on's `config.yaml` schema defines it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddonOptions {
    #[serde(default)]
    pub dropbox_app_key: String,
    #[serde(default)]
    pub dropbox_app_secret: Option<String>,
    pub backup_interval_hours: u32,
    pub max_backups_in_dropbox: u32,
    pub dropbox_backup_path: String,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
    #[serde(default)]
    pub keep_yearly: u32,
    #[serde(default)]
    pub upload_limit_bytes_per_second: u64,
    #[serde(default = "crate::config::default_chunk_mib")]
    pub chunk_mib: u64,
    #[serde(default = "default_log")]
    pub log_level: String,
}

fn default_log() -> String {
    "info".into()
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

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Reads the options and builds the configuration (data in `data_dir`, normally `/data`).
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
    if o.backup_interval_hours == 0 {
        return bad("backup_interval_hours", "must be at least 1");
    }
    if !o.dropbox_backup_path.starts_with('/') {
        return bad(
            "dropbox_backup_path",
            "must start with '/', e.g. /HomeAssistant/Backups",
        );
    }

    let data = data_dir.display().to_string();
    let mut toml = format!(
        "data_dir = {data}\njobs_dir = {jobs}\n\
         [api]\nlisten = \"0.0.0.0:8099\"\nallow_from = [\"{INGRESS_PROXY}\"]\n\
         [log]\nlevel = {level}\n\
         [homeassistant]\nenabled = true\n\
         [sources.ha]\ntype = \"supervisor\"\n",
        data = toml_str(&data),
        jobs = toml_str(&data_dir.join("jobs").display().to_string()),
        level = toml_str(&o.log_level),
    );
    let dropbox = !o.dropbox_app_key.trim().is_empty();
    if dropbox {
        toml.push_str(&format!(
            "[destinations.dropbox]\ntype = \"dropbox\"\npath = {path}\napp_key = {key}\nchunk_mib = {chunk}\n\
             max_backups = {max}\nkeep_daily = {d}\nkeep_weekly = {w}\nkeep_monthly = {m}\nkeep_yearly = {y}\n\
             throttle_bytes_per_sec = {t}\n",
            path = toml_str(o.dropbox_backup_path.trim_end_matches('/')),
            key = toml_str(o.dropbox_app_key.trim()),
            chunk = o.chunk_mib,
            max = o.max_backups_in_dropbox,
            d = o.keep_daily,
            w = o.keep_weekly,
            m = o.keep_monthly,
            y = o.keep_yearly,
            t = o.upload_limit_bytes_per_second,
        ));
        if let Some(secret) = o
            .dropbox_app_secret
            .as_deref()
            .filter(|s| !s.trim().is_empty())
        {
            toml.push_str(&format!("app_secret = {}\n", toml_str(secret.trim())));
        }
    }
    toml.push_str(&format!(
        "[snapshots]\nenabled = {dropbox}\nsource = \"ha\"\ndestinations = [{dests}]\nscan_on_start = true\n\
         [snapshots.schedule]\nevery = \"{h}h\"\n",
        dests = if dropbox { "\"dropbox\"" } else { "" },
        h = o.backup_interval_hours,
    ));
    let mut config = Config::from_overlay(&toml).map_err(|e| {
        // Name the add-on option the user can change, not our internal key.
        let key = e.key.as_deref().map(|k| match k {
            k if k.starts_with("destinations.dropbox.app_key") => "dropbox_app_key".to_string(),
            "destinations.dropbox.chunk_mib" => "chunk_mib".to_string(),
            "log.level" => "log_level".to_string(),
            other => other.to_string(),
        });
        ConfigError { key, ..e }.in_file(options)
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
        assert_eq!(d.app_key.as_deref(), Some("abc123"));
        assert!(
            d.app_secret.is_none(),
            "an empty secret means PKCE without one"
        );
        assert_eq!(d.path, "/HomeAssistant/Backups");
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
}
