//! The Home Assistant add-on packaging, checked against the rules the Supervisor applies
//! (home-assistant/supervisor `supervisor/apps/validate.py`, `options.py`, `store/data.py`).

use std::{collections::BTreeSet, path::Path, process::Command};

use regex::Regex;
use serde_json::Value;
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

/// What the Supervisor stores in `options.json` for `value` under schema type `schema`, or why
/// it refuses it at save time — as `_single_validate` in supervisor/addons/options.py does:
/// `int` coerces and checks its bounds, `list` and `match` compare `str(value)` (and store that
/// string; `match` is Python's `re.match`, anchored at the start only, with `$` also matching
/// before a final newline), `str`/`password` take strings, `bool` booleans.
fn supervisor_stores(schema: &str, value: &Value) -> Result<Value, String> {
    let re = Regex::new(RE_SCHEMA_ELEMENT).unwrap();
    let caps = re
        .captures(schema)
        .ok_or_else(|| format!("type {schema:?} is not in the Supervisor's grammar"))?;
    let base = schema.trim_end_matches('?');
    let num = |name: &str| caps.name(name).map(|m| m.as_str().parse::<i128>().unwrap());
    // Python's str() of a JSON value.
    let python_str = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        other => other.to_string(),
    };
    if base.starts_with("int") {
        let v: i128 = match value {
            Value::Number(n) => n
                .as_i64()
                .map(i128::from)
                .or(n.as_u64().map(i128::from))
                .or(n.as_f64().map(|f| f.trunc() as i128))
                .ok_or("not a number")?,
            Value::String(s) => s.trim().parse().map_err(|_| "not an integer")?,
            Value::Bool(b) => i128::from(*b),
            _ => return Err("not an integer".into()),
        };
        if num("i_min").is_some_and(|m| v < m) || num("i_max").is_some_and(|m| v > m) {
            return Err(format!("{v} out of {base}"));
        }
        return Ok(serde_json::json!(v as u64));
    }
    if base.starts_with("str") || base.starts_with("password") {
        let v = value.as_str().ok_or("not a string")?;
        let len = v.chars().count() as i128;
        if num("s_min").or(num("p_min")).is_some_and(|m| len < m)
            || num("s_max").or(num("p_max")).is_some_and(|m| len > m)
        {
            return Err("length out of bounds".into());
        }
        return Ok(value.clone());
    }
    if let Some(choices) = caps.name("list") {
        let v = python_str(value);
        if !choices.as_str().split('|').any(|c| c == v) {
            return Err(format!("{v:?} is not one of {}", choices.as_str()));
        }
        return Ok(Value::String(v));
    }
    if let Some(pattern) = caps.name("match") {
        let v = python_str(value);
        let re = Regex::new(&format!("^(?:{})", pattern.as_str()))
            .unwrap_or_else(|e| panic!("match({}): {e}", pattern.as_str()));
        let before_newline = v.strip_suffix('\n').is_some_and(|w| re.is_match(w));
        if !re.is_match(&v) && !before_newline {
            return Err(format!("{v:?} does not match {}", pattern.as_str()));
        }
        return Ok(Value::String(v));
    }
    if base == "bool" {
        return value
            .as_bool()
            .map(Value::Bool)
            .ok_or_else(|| "not a bool".into());
    }
    Err(format!("type {schema:?} is not modelled here"))
}

/// A small deterministic generator (no data set, no seed file): the same samples every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Values a user can try to save for schema type `schema`: its boundaries, a generated sample,
/// and awkward cases; the caller keeps those the Supervisor accepts.
fn candidates(schema: &str, rng: &mut Lcg) -> Vec<Value> {
    let re = Regex::new(RE_SCHEMA_ELEMENT).unwrap();
    let caps = re.captures(schema).unwrap();
    let base = schema.trim_end_matches('?');
    let num = |name: &str| caps.name(name).map(|m| m.as_str().parse::<i128>().unwrap());
    if base.starts_with("int") {
        let (Some(min), Some(max)) = (num("i_min"), num("i_max")) else {
            panic!("{schema}: an unbounded int lets a user save any number (2^64 − 1 too)");
        };
        let mut v = vec![min, max, min + 1, max - 1, (min + max) / 2];
        v.extend((0..25).map(|_| min + i128::from(rng.next()) % (max - min + 1)));
        return v.into_iter().map(|n| serde_json::json!(n as u64)).collect();
    }
    if let Some(choices) = caps.name("list") {
        return choices.as_str().split('|').map(Value::from).collect();
    }
    if base == "bool" {
        return vec![Value::Bool(true), Value::Bool(false)];
    }
    let mut words: Vec<String> = [
        "",
        " ",
        "x",
        "/",
        "//",
        "/a",
        "/a/",
        "/a//b",
        "/HomeAssistant/Backups",
        "/HomeAssistant/Backups/",
        "/a b/c",
        "/ünï/cödé",
        "/a\n",
        "/a\u{85}",
        "/a\tb",
        "/.",
        "/a.b",
        "relative",
        " /a",
        "/a ",
        "/a\\b",
        "/\"q\"",
        "/a/b/c/d/e",
        "abc123",
        "with space",
        "\"q\" \\ 'x'",
        "line\nbreak",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    words.push(format!("/{}", "x".repeat(300)));
    words.push("k".repeat(1000));
    let alphabet = [
        '/', 'a', 'Z', '9', ' ', '.', '-', '_', 'é', '\t', '\n', '\\', '"',
    ];
    let generated = if caps.name("match").is_some() {
        300
    } else {
        20
    };
    for _ in 0..generated {
        let len = 1 + rng.next() % 12;
        let mut w: String = (0..len)
            .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
            .collect();
        if rng.next().is_multiple_of(2) {
            w.insert(0, '/');
        }
        words.push(w);
    }
    words.into_iter().map(Value::String).collect()
}

/// What the add-on says at start-up with `options` in `/data/options.json`: the binary's own
/// configuration check, in the environment the Supervisor gives it.
fn start_with(options: &serde_json::Map<String, Value>) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("options.json");
    std::fs::write(&file, Value::Object(options.clone()).to_string()).unwrap();
    let o = Command::new(crate::cli::bin())
        .current_dir(dir.path())
        .args(["config", "check"])
        .env("OFFSITE_OPTIONS", &file)
        .env("SUPERVISOR_TOKEN", "supervisor-token")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// A schema entry's type string, and whether the option is a list of it (`- list(…)`, which
/// the Supervisor validates item by item; a list of `list(…)` is its multi-select).
fn element_of(t: &Yaml) -> (&str, bool) {
    match t {
        Yaml::Array(items) => {
            assert_eq!(items.len(), 1, "a list schema has one element type: {t:?}");
            (items[0].as_str().expect("element type"), true)
        }
        other => (other.as_str().expect("a schema type string"), false),
    }
}

/// A list option whose items are dictionaries (`- name: str …`): the fields' type strings.
fn item_fields(t: &Yaml) -> Option<Vec<(String, String)>> {
    let items = t.as_vec()?;
    let h = items.first()?.as_hash()?;
    Some(
        h.iter()
            .map(|(k, v)| {
                (
                    k.as_str().unwrap().to_string(),
                    v.as_str().expect("an item field's type").to_string(),
                )
            })
            .collect(),
    )
}

/// A scalar (or list of scalars) option default as JSON.
fn yaml_json(y: &Yaml) -> Value {
    match y {
        Yaml::Integer(i) => serde_json::json!(i),
        Yaml::String(s) => serde_json::json!(s),
        Yaml::Boolean(b) => serde_json::json!(b),
        Yaml::Array(items) => Value::Array(items.iter().map(yaml_json).collect()),
        other => panic!("unexpected option default {other:?}"),
    }
}

/// The manifest's default options as JSON, with an app key so that every Dropbox option is used.
fn saved_defaults() -> (Yaml, serde_json::Map<String, Value>) {
    let c = load("offsite/config.yaml");
    let mut json = serde_json::Map::new();
    for (k, t) in c["schema"].as_hash().unwrap() {
        let k = k.as_str().unwrap();
        if item_fields(t).is_some() {
            // A list of items (devices), empty by default; its items have their own test.
            assert_eq!(c["options"][k].as_vec().map(Vec::len), Some(0), "{k}");
            json.insert(k.to_string(), Value::Array(Vec::new()));
            continue;
        }
        let (t, list) = element_of(t);
        let stored = if list {
            // A list option: each item is checked against the element type.
            let items = c["options"][k]
                .as_vec()
                .unwrap_or_else(|| panic!("option {k}: a list schema needs a list default"));
            Value::Array(
                items
                    .iter()
                    .map(|y| {
                        supervisor_stores(t, &yaml_json(y))
                            .unwrap_or_else(|e| panic!("option {k}: {e}"))
                    })
                    .collect(),
            )
        } else {
            supervisor_stores(t, &yaml_json(&c["options"][k]))
                .unwrap_or_else(|e| panic!("option {k}: {e}"))
        };
        json.insert(k.to_string(), stored);
    }
    json.insert("dropbox_app_key".into(), "abc123".into());
    (c, json)
}

#[test]
fn every_value_the_schema_lets_a_user_save_starts_the_addon() {
    let (c, defaults) = saved_defaults();
    let mut rng = Lcg(0x00ff_517e);
    let mut tried = 0;
    for (k, t) in c["schema"].as_hash().unwrap() {
        let option = k.as_str().unwrap();
        if item_fields(t).is_some() {
            continue; // a list of items (devices): its own test
        }
        let (schema, list) = element_of(t);
        let items: Vec<Value> = candidates(schema, &mut rng)
            .iter()
            .filter_map(|v| supervisor_stores(schema, v).ok())
            .collect();
        let mut saved: Vec<Option<Value>> = if list {
            // Each item alone, and all of them.
            let mut lists: Vec<Option<Value>> = items
                .iter()
                .map(|v| Some(Value::Array(vec![v.clone()])))
                .collect();
            lists.push(Some(Value::Array(items.clone())));
            lists
        } else {
            items.into_iter().map(Some).collect()
        };
        assert!(!saved.is_empty(), "{option}: no sample fits {schema}");
        if schema.ends_with('?') {
            saved.push(None);
        }
        for value in saved {
            let mut options = defaults.clone();
            match &value {
                Some(v) => options.insert(option.to_string(), v.clone()),
                None => options.remove(option),
            };
            start_with(&options).unwrap_or_else(|e| {
                panic!("the Supervisor saves {option} = {value:?} ({schema}), the add-on refuses it: {e}")
            });
            tried += 1;
        }
    }
    assert!(tried > 200, "{tried} values tried");
}

#[test]
fn values_the_addon_refuses_are_refused_at_save_and_named_at_start() {
    let (c, defaults) = saved_defaults();
    let cases = [
        ("chunk_mib", serde_json::json!(10)),
        ("chunk_mib", serde_json::json!("10")),
        ("chunk_mib", serde_json::json!(0)),
        ("chunk_mib", serde_json::json!(152)),
        ("dropbox_backup_path", serde_json::json!("/")),
        ("dropbox_backup_path", serde_json::json!("//")),
        ("dropbox_backup_path", serde_json::json!("/a//b")),
        ("dropbox_backup_path", serde_json::json!("Backups")),
        ("backup_interval_hours", serde_json::json!(0)),
        ("backup_interval_hours", serde_json::json!(u64::MAX)),
        ("max_backups_in_dropbox", serde_json::json!(1u64 << 32)),
        ("keep_daily", serde_json::json!((1u64 << 32) + 1)),
        ("keep_yearly", serde_json::json!(u64::from(u32::MAX))),
        ("upload_limit_bytes_per_second", serde_json::json!(u64::MAX)),
        ("log_level", serde_json::json!("loud")),
    ];
    for (option, value) in cases {
        let schema = c["schema"][option].as_str().unwrap();
        assert!(
            supervisor_stores(schema, &value).is_err(),
            "the Supervisor lets a user save {option} = {value} ({schema})"
        );
        let mut options = defaults.clone();
        options.insert(option.to_string(), value.clone());
        let e = start_with(&options).expect_err(&format!("{option} = {value} starts"));
        assert!(
            e.contains("options.json") && e.contains(&format!("`{option}`")),
            "{option} = {value}: {e}"
        );
        assert!(!e.contains("destinations."), "internal key in {e}");
    }
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
    // Least privilege: backups come through the Supervisor API (hassio_role backup), so no
    // folder of the host is mapped in, not even /backup read-only. The one exception is where
    // external drives appear (media, share), which database dumps are written to (FR-011).
    let mapped: Vec<(&str, Option<bool>)> = c["map"]
        .as_vec()
        .expect("map: the external drive folders")
        .iter()
        .map(|m| (str_of(m, "type").unwrap(), m["read_only"].as_bool()))
        .collect();
    assert_eq!(
        mapped,
        [("media", Some(false)), ("share", Some(false))],
        "only where external drives appear"
    );
    assert!(
        !std::fs::read_to_string(root().join("offsite/apparmor.txt"))
            .unwrap()
            .contains("/backup"),
        "the AppArmor profile grants no /backup either"
    );
    // The panel is reached from the Info tab; the sidebar entry is a toggle that starts off.
    let docs = std::fs::read_to_string(root().join("offsite/DOCS.md")).unwrap();
    assert!(
        docs.contains("Open web UI") && docs.contains("Show in sidebar"),
        "DOCS say how to reach the panel"
    );
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
    // Every default fits its type (saved_defaults() checks each with the Supervisor's rules).
    assert_eq!(saved_defaults().1.len(), schema.len());
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
        json.insert(k.as_str().unwrap().into(), yaml_json(v));
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

#[test]
fn the_version_that_ships_is_the_same_everywhere() {
    let read = |p: &str| std::fs::read_to_string(root().join(p)).unwrap();
    let cargo: toml::Table = read("Cargo.toml").parse().unwrap();
    let version = cargo["package"]["version"].as_str().unwrap();
    let manifest = load("offsite/config.yaml");
    assert_eq!(
        str_of(&manifest, "version"),
        Some(version),
        "config.yaml and Cargo.toml"
    );

    // The add-on's changelog (shown by the Supervisor) opens with the version it ships; an
    // "Unreleased" section there would list what the manifest already enables.
    let addon_log = read("offsite/CHANGELOG.md");
    let headings: Vec<&str> = addon_log
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .collect();
    assert_eq!(
        headings.first().copied(),
        Some(version),
        "offsite/CHANGELOG.md: {headings:?}"
    );
    assert!(
        !headings
            .iter()
            .any(|h| h.eq_ignore_ascii_case("unreleased")),
        "{headings:?}"
    );
    // The project's changelog: either that version's section, or (before the release is cut)
    // its Unreleased section saying which version it is.
    let log = read("CHANGELOG.md");
    let released: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .filter(|h| h.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .collect();
    match released.first() {
        Some(newest) => assert_eq!(newest.split_whitespace().next(), Some(version)),
        None => {
            let unreleased = log.split("\n## ").nth(1).unwrap_or("");
            assert!(
                unreleased.contains(&format!("Version {version}")),
                "CHANGELOG.md's Unreleased section names the version {version}"
            );
        }
    }

    // The image says the same: labels from build args, which the workflow takes from the
    // manifest, and pushes to the image the manifest names.
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains("io.hass.arch=\"${BUILD_ARCH}\"")
            && dockerfile.contains("io.hass.version=\"${BUILD_VERSION}\""),
        "labels come from build args"
    );
    assert!(
        !dockerfile.contains(&format!("\"{version}\"")),
        "no version written into the Dockerfile"
    );
    let workflow = read(".github/workflows/publish.yml");
    for needed in [
        "offsite/config.yaml",
        "BUILD_ARCH=$ARCH",
        "BUILD_VERSION=$VERSION",
        "docker push \"$IMAGE:$VERSION\"",
    ] {
        assert!(workflow.contains(needed), "publish.yml: {needed}");
    }
    let arch: Vec<&str> = manifest["arch"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    for a in arch {
        assert!(
            workflow.contains(&format!("arch: {a}")),
            "publish.yml builds {a}"
        );
    }
}

/// The `devices` list: every value the schema lets a user save in each field of an item starts
/// the add-on (one device, the other fields valid), and what the add-on refuses beyond the
/// schema (a repeated name) is named by the option, `devices[1].name`.
#[test]
fn every_device_item_the_schema_lets_a_user_save_starts_the_addon() {
    let (c, defaults) = saved_defaults();
    let fields = item_fields(&c["schema"]["devices"]).expect("devices is a list of items");
    assert_eq!(
        c["options"]["devices"].as_vec().map(Vec::len),
        Some(0),
        "no device by default"
    );
    let valid = serde_json::json!({"name": "kitchen", "type": "wled", "host": "10.0.0.5",
        "username": "admin", "password": "pw", "schedule_hours": 24, "keep": 10});
    let extra: &[(&str, &[&str])] = &[
        (
            "host",
            &[
                "10.0.0.5:8080",
                "wled-kitchen.local",
                "a",
                "255.255.255.255:65535",
                "h\n",
            ],
        ),
        ("name", &["Kitchen_2", "a-b", "x\n"]),
    ];
    let mut rng = Lcg(0xde71ce);
    let mut tried = 0;
    for (field, schema) in &fields {
        let mut values = candidates(schema, &mut rng);
        if let Some((_, more)) = extra.iter().find(|(f, _)| f == field) {
            values.extend(more.iter().map(|s| Value::from(*s)));
        }
        let mut saved: Vec<Option<Value>> = values
            .iter()
            .filter_map(|v| supervisor_stores(schema, v).ok())
            .map(Some)
            .collect();
        assert!(
            !saved.is_empty(),
            "devices.{field}: no sample fits {schema}"
        );
        if schema.ends_with('?') {
            saved.push(None);
        }
        for value in saved {
            let mut item = valid.clone();
            match &value {
                Some(v) => item[field.as_str()] = v.clone(),
                None => {
                    item.as_object_mut().unwrap().remove(field.as_str());
                }
            }
            let mut options = defaults.clone();
            options.insert("devices".into(), Value::Array(vec![item]));
            start_with(&options).unwrap_or_else(|e| {
                panic!("the Supervisor saves devices[0].{field} = {value:?} ({schema}), the add-on refuses it: {e}")
            });
            tried += 1;
        }
    }
    assert!(tried > 50, "{tried} values tried");

    // Refused at save: values the add-on could not use.
    let host = fields.iter().find(|(f, _)| f == "host").unwrap().1.clone();
    for bad in [
        "",
        "a b",
        "http://x",
        "1.2.3.256",
        "4294967296",
        "a:0",
        "a:65536",
        "x/y",
    ] {
        assert!(
            supervisor_stores(&host, &Value::from(bad)).is_err(),
            "the Supervisor lets a user save devices[].host = {bad:?}"
        );
    }

    // Beyond the schema: a name used twice is named by its option.
    let mut options = defaults.clone();
    options.insert(
        "devices".into(),
        Value::Array(vec![valid.clone(), valid.clone()]),
    );
    let e = start_with(&options).unwrap_err();
    assert!(e.contains("devices[1].name"), "{e}");
    assert!(!e.contains("pw\""), "{e}");
}
