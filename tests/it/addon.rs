//! The Home Assistant add-on packaging, checked against the rules the Supervisor applies
//! (home-assistant/supervisor `supervisor/apps/validate.py`, `options.py`, `store/data.py`).

use std::{collections::BTreeSet, path::Path, process::Command};

use regex::Regex;
use yaml_rust2::{Yaml, YamlLoader};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn load(path: &str) -> Yaml {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .remove(0)
}

fn str_of<'a>(y: &'a Yaml, key: &str) -> Option<&'a str> {
    y[key].as_str()
}

/// The Supervisor's grammar for schema type strings (RE_SCHEMA_ELEMENT), verbatim.
const RE_SCHEMA_ELEMENT: &str = r"^(?:|bool|email|url|port|device(?:\((?P<filter>subsystem=[a-z]+)\))?|str(?:\((?P<s_min>\d+)?,(?P<s_max>\d+)?\))?|password(?:\((?P<p_min>\d+)?,(?P<p_max>\d+)?\))?|int(?:\((?P<i_min>-?\d+)?,(?P<i_max>-?\d+)?\))?|float(?:\((?P<f_min>-?\d*\.?\d+)?,(?P<f_max>-?\d*\.?\d+)?\))?|match\((?P<match>.*)\)|list\((?P<list>.+)\))\??$";

/// Checks a default option value against its schema type, as the Supervisor does at start.
fn value_fits(schema: &str, value: &Yaml) -> Result<(), String> {
    let re = Regex::new(RE_SCHEMA_ELEMENT).unwrap();
    let caps = re
        .captures(schema)
        .ok_or_else(|| format!("type {schema:?} is not in the Supervisor's grammar"))?;
    let base = schema.trim_end_matches('?');
    let num = |name: &str| caps.name(name).map(|m| m.as_str().parse::<i64>().unwrap());
    if base.starts_with("int") {
        let v = value.as_i64().ok_or("not an integer")?;
        if num("i_min").is_some_and(|m| v < m) || num("i_max").is_some_and(|m| v > m) {
            return Err(format!("{v} out of {base}"));
        }
    } else if base.starts_with("str") || base.starts_with("password") {
        let v = value.as_str().ok_or("not a string")?;
        let len = v.chars().count() as i64;
        if num("s_min").or(num("p_min")).is_some_and(|m| len < m)
            || num("s_max").or(num("p_max")).is_some_and(|m| len > m)
        {
            return Err("length out of bounds".into());
        }
    } else if let Some(choices) = caps.name("list") {
        let v = value.as_str().ok_or("not a string")?;
        if !choices.as_str().split('|').any(|c| c == v) {
            return Err(format!("{v:?} is not one of {}", choices.as_str()));
        }
    } else if let Some(pattern) = caps.name("match") {
        let v = value.as_str().ok_or("not a string")?;
        if !Regex::new(&format!("^(?:{})$", pattern.as_str()))
            .unwrap()
            .is_match(v)
        {
            return Err(format!("{v:?} does not match {}", pattern.as_str()));
        }
    } else if base == "bool" {
        value.as_bool().ok_or("not a bool")?;
    }
    Ok(())
}

#[test]
fn addon_manifest_passes_the_supervisor_rules() {
    let c = load("offsite/config.yaml");
    for key in ["name", "version", "slug", "description"] {
        assert!(
            str_of(&c, key).is_some_and(|v| !v.is_empty()),
            "config.yaml needs {key}"
        );
    }
    assert!(
        Regex::new(r"^[-_.A-Za-z0-9]+$")
            .unwrap()
            .is_match(str_of(&c, "slug").unwrap())
    );
    let arch: Vec<&str> = c["arch"]
        .as_vec()
        .expect("arch list")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(arch, vec!["aarch64", "amd64"], "prebuilt images for these");
    assert!(
        ["initialize", "system", "services", "application", "once"]
            .contains(&str_of(&c, "startup").unwrap())
    );
    assert!(["auto", "manual", "manual_only"].contains(&str_of(&c, "boot").unwrap()));
    assert_eq!(
        c["init"].as_bool(),
        Some(false),
        "offsite handles signals itself"
    );
    assert_eq!(
        str_of(&c, "hassio_role"),
        Some("backup"),
        "no broader role than backup"
    );
    assert_eq!(c["hassio_api"].as_bool(), Some(true));
    assert_eq!(c["homeassistant_api"].as_bool(), Some(true));
    assert_eq!(c["ingress"].as_bool(), Some(true));
    assert_eq!(c["ingress_port"].as_i64(), Some(8099));
    assert!(str_of(&c, "panel_icon").unwrap().starts_with("mdi:"));
    let timeout = c["timeout"].as_i64().unwrap();
    assert!((10..=300).contains(&timeout));
    assert!(["hot", "cold"].contains(&str_of(&c, "backup").unwrap()));
    assert!(str_of(&c, "backup_pre").unwrap().contains("db-snapshot"));
    let map_re = Regex::new(r"^(data|config|ssl|local_apps|addons|backup|share|media|homeassistant_config|all_app_configs|all_addon_configs|app_config|addon_config)(?::(rw|ro))?$").unwrap();
    let maps: Vec<&str> = c["map"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(maps.iter().all(|m| map_re.is_match(m)), "{maps:?}");
    assert!(maps.contains(&"backup:ro"));
    // image: registry, then lowercase components; no tag; {arch} placeholder.
    let image = str_of(&c, "image").unwrap();
    assert!(!image.contains(':') && image.contains("{arch}"), "{image}");
    let comp = Regex::new(r"^[a-z0-9{][a-z0-9.\-_{}]*$").unwrap();
    assert!(
        image.split('/').skip(1).all(|p| comp.is_match(p)),
        "{image}"
    );
    assert!(url::Url::parse(str_of(&c, "url").unwrap()).is_ok());

    // options and schema agree; every default fits its type.
    let options = c["options"].as_hash().unwrap();
    let schema = c["schema"].as_hash().unwrap();
    let opt_keys: BTreeSet<&str> = options.keys().filter_map(Yaml::as_str).collect();
    let schema_keys: BTreeSet<&str> = schema.keys().filter_map(Yaml::as_str).collect();
    assert_eq!(
        opt_keys, schema_keys,
        "every option has a schema entry and the other way round"
    );
    for (k, t) in schema {
        let (k, t) = (k.as_str().unwrap(), t.as_str().unwrap());
        value_fits(t, &options[&Yaml::String(k.into())])
            .unwrap_or_else(|e| panic!("option {k}: {e}"));
    }
    assert_eq!(
        str_of(&c["schema"], "dropbox_app_secret"),
        Some("password?"),
        "secrets are passwords"
    );
    // The original add-on's option names are kept.
    for seed in [
        "dropbox_app_key",
        "dropbox_app_secret",
        "backup_interval_hours",
        "max_backups_in_dropbox",
        "dropbox_backup_path",
    ] {
        assert!(opt_keys.contains(seed), "{seed}");
    }

    // Every option has a translated name and description.
    let t = load("offsite/translations/en.yaml");
    for k in &opt_keys {
        let entry = &t["configuration"][*k];
        assert!(
            str_of(entry, "name").is_some() && str_of(entry, "description").is_some(),
            "translation for {k}"
        );
    }
    for f in [
        "DOCS.md",
        "CHANGELOG.md",
        "icon.png",
        "logo.png",
        "apparmor.txt",
    ] {
        assert!(root().join("offsite").join(f).is_file(), "offsite/{f}");
    }
    let r = load("repository.yaml");
    assert!(str_of(&r, "name").is_some() && str_of(&r, "maintainer").is_some());
    assert!(url::Url::parse(str_of(&r, "url").unwrap()).is_ok());
}

#[test]
fn the_defaults_of_the_manifest_load_as_a_configuration() {
    let c = load("offsite/config.yaml");
    let mut json = serde_json::Map::new();
    for (k, v) in c["options"].as_hash().unwrap() {
        let value = match v {
            Yaml::Integer(i) => serde_json::json!(i),
            Yaml::String(s) => serde_json::json!(s),
            Yaml::Boolean(b) => serde_json::json!(b),
            other => panic!("unexpected {other:?}"),
        };
        json.insert(k.as_str().unwrap().into(), value);
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("options.json");
    std::fs::write(&file, serde_json::Value::Object(json).to_string()).unwrap();
    let config =
        offsite::addon::load(&file, Path::new("/data")).expect("the shipped defaults are valid");
    assert!(
        !config.snapshots.unwrap().enabled,
        "nothing uploads until an app key is set"
    );
}

#[test]
fn no_other_file_looks_like_an_addon_manifest() {
    let out = Command::new("git")
        .arg("-C")
        .arg(root())
        .args(["ls-files", "--cached", "--others", "--exclude-standard"])
        .output()
        .unwrap();
    let files = String::from_utf8(out.stdout).unwrap();
    let manifests: Vec<&str> = files
        .lines()
        .filter(|f| {
            let name = f.rsplit('/').next().unwrap();
            matches!(name, "config.yaml" | "config.yml" | "config.json")
                && !f.split('/').any(|p| p.starts_with('.') || p == "rootfs")
        })
        .collect();
    assert_eq!(manifests, vec!["offsite/config.yaml"]);
}
