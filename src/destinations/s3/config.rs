//! The S3-specific configuration, its validation, and where the credentials come from.

use serde::{Deserialize, Serialize};

use super::AWS_MAX_PARTS;
use crate::redact::Secret;

/// The storage classes S3 documents for PutObject / CreateMultipartUpload.
pub const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "OUTPOSTS",
    "GLACIER_IR",
    "SNOW",
    "EXPRESS_ONEZONE",
];

// -- configuration ----------------------------------------------------------------------------

/// How the bucket appears in request URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Addressing {
    /// `https://endpoint/bucket/key` (MinIO and most self-hosted servers).
    Path,
    /// `https://bucket.endpoint/key` (AWS and most hosted S3-compatibles).
    VirtualHost,
}

/// Server-side encryption S3 applies at rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Sse {
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    AwsKms,
}

impl Sse {
    pub(super) fn header(self) -> &'static str {
        match self {
            Sse::Aes256 => "AES256",
            Sse::AwsKms => "aws:kms",
        }
    }
}

/// The S3-specific part of a destination's configuration (retention, throttling and chunk
/// size are common to every destination and live outside).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Default: AWS, `https://s3.{region}.amazonaws.com`.
    #[serde(default)]
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Key prefix backups go under ("" = the bucket's top level); leading and trailing '/'
    /// are ignored.
    #[serde(default)]
    pub prefix: String,
    /// Default: `virtual_host`, except `path` for an endpoint that is an IP address or
    /// `localhost` (a bucket cannot be a subdomain of those).
    #[serde(default)]
    pub addressing: Option<Addressing>,
    /// With `secret_access_key`; when both are absent the standard AWS environment variables
    /// are used, then the shared credentials file.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// One of [`STORAGE_CLASSES`]; default: the bucket's (STANDARD).
    #[serde(default)]
    pub storage_class: Option<String>,
    #[serde(default)]
    pub sse: Option<Sse>,
    /// Only with `sse = "aws:kms"`; default: the account's AWS managed key.
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// The provider's part limit: 10,000 on AWS, 1,000 on Scaleway.
    #[serde(default = "default_max_parts")]
    pub max_parts: u64,
    /// Read the keys from `<credentials_env>_ACCESS_KEY` and `<credentials_env>_SECRET_KEY`
    /// (the seed's `EU_PROVIDER`), for a second provider beside AWS's own variables.
    #[serde(default)]
    pub credentials_env: Option<String>,
}

fn default_max_parts() -> u64 {
    AWS_MAX_PARTS
}

type Invalid = (String, String);

fn invalid(field: &str, message: impl Into<String>) -> Result<(), Invalid> {
    Err((field.to_string(), message.into()))
}

impl S3Config {
    /// The first problem found, as (field, message).
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.region.trim().is_empty() {
            return invalid("region", "required (for example \"eu-central-1\")");
        }
        if let Some(p) = &self.credentials_env
            && (p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        {
            return invalid(
                "credentials_env",
                format!("{p:?} is not a variable name prefix (like \"EU_PROVIDER\")"),
            );
        }
        if let Some(endpoint) = &self.endpoint {
            match url::Url::parse(endpoint) {
                Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                    return invalid("endpoint", "must start with https:// (or http://)");
                }
                Ok(url) if url.host_str().is_none_or(str::is_empty) => {
                    return invalid("endpoint", "has no host name");
                }
                Ok(url) if url.query().is_some() || url.fragment().is_some() => {
                    return invalid("endpoint", "must not have a query string or fragment");
                }
                Ok(_) => {}
                Err(e) => return invalid("endpoint", format!("not a URL: {e}")),
            }
        }
        let bucket = &self.bucket;
        if bucket.is_empty() {
            return invalid("bucket", "required");
        }
        if bucket.contains('/') || bucket.chars().any(char::is_whitespace) {
            return invalid(
                "bucket",
                "a bucket name, without '/' or spaces (put folders in `prefix`)",
            );
        }
        if !(3..=63).contains(&bucket.len()) {
            return invalid("bucket", "S3 bucket names are 3 to 63 characters long");
        }
        if self.addressing() == Addressing::VirtualHost
            && !bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return invalid(
                "bucket",
                "with virtual-host addressing a bucket name may only have lower-case letters, \
                 digits, '-' and '.'; set addressing = \"path\" if your server allows others",
            );
        }
        let prefix = self.prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
            && !prefix.is_empty()
        {
            return invalid(
                "prefix",
                "folder names separated by single '/', without \".\" or \"..\"",
            );
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(_), None) => {
                return invalid("secret_access_key", "required with access_key_id");
            }
            (None, Some(_)) => {
                return invalid("access_key_id", "required with secret_access_key");
            }
            (Some(id), Some(_)) if id.trim().is_empty() => {
                return invalid("access_key_id", "empty");
            }
            _ => {}
        }
        if let Some(class) = &self.storage_class
            && !STORAGE_CLASSES.contains(&class.as_str())
        {
            return invalid(
                "storage_class",
                format!(
                    "unknown storage class; one of {}",
                    STORAGE_CLASSES.join(", ")
                ),
            );
        }
        if self.kms_key_id.is_some() && self.sse != Some(Sse::AwsKms) {
            return invalid("kms_key_id", "only used with sse = \"aws:kms\"");
        }
        if !(1..=AWS_MAX_PARTS).contains(&self.max_parts) {
            return invalid("max_parts", format!("1 to {AWS_MAX_PARTS}"));
        }
        Ok(())
    }

    pub fn endpoint(&self) -> String {
        match &self.endpoint {
            Some(e) => e.trim_end_matches('/').to_string(),
            None => format!("https://s3.{}.amazonaws.com", self.region.trim()),
        }
    }

    pub fn addressing(&self) -> Addressing {
        if let Some(a) = self.addressing {
            return a;
        }
        let endpoint = self.endpoint();
        let host = url::Url::parse(&endpoint)
            .ok()
            .and_then(|u| u.host().map(|h| h.to_owned()));
        match host {
            Some(url::Host::Domain(d)) if d != "localhost" => Addressing::VirtualHost,
            Some(_) => Addressing::Path,
            None => Addressing::VirtualHost,
        }
    }
}

// -- credentials ------------------------------------------------------------------------------

/// Access key, secret and (temporary credentials) session token, resolved once at start-up.
#[derive(Clone)]
pub(super) struct Keys {
    pub(super) id: String,
    pub(super) secret: Secret,
    pub(super) token: Option<Secret>,
    /// For messages: "configuration", "environment", "~/.aws/credentials [default]".
    pub(super) from: String,
}

/// Configuration, else `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`(/`AWS_SESSION_TOKEN`), else
/// the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`, profile
/// `AWS_PROFILE` or `default`).
pub(super) fn resolve_keys(
    config: &S3Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Keys, String> {
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        return Ok(Keys {
            id: id.trim().to_string(),
            secret: secret.clone(),
            token: None,
            from: "the configuration".into(),
        });
    }
    if let Some(prefix) = &config.credentials_env {
        let (id_var, secret_var) = (
            format!("{prefix}_ACCESS_KEY"),
            format!("{prefix}_SECRET_KEY"),
        );
        return match (env(&id_var), env(&secret_var)) {
            (Some(id), Some(secret)) => Ok(Keys {
                id: id.trim().to_string(),
                secret: Secret::new(secret),
                token: None,
                from: format!("{id_var}/{secret_var}"),
            }),
            _ => Err(format!(
                "credentials_env = {prefix:?}: {id_var} and {secret_var} must both be set in the environment"
            )),
        };
    }
    if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Keys {
            id,
            secret: Secret::new(secret),
            token: env("AWS_SESSION_TOKEN").map(Secret::new),
            from: "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY".into(),
        });
    }
    let file = match env("AWS_SHARED_CREDENTIALS_FILE") {
        Some(f) => std::path::PathBuf::from(f),
        None => match env("HOME") {
            Some(home) => std::path::Path::new(&home).join(".aws/credentials"),
            None => return Err(no_credentials()),
        },
    };
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(no_credentials()),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let values = ini_section(&text, &profile);
    let get = |k: &str| {
        values
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(id), Some(secret)) => Ok(Keys {
            id,
            secret: Secret::new(secret),
            token: get("aws_session_token").map(Secret::new),
            from: format!("{} [{profile}]", file.display()),
        }),
        _ => Err(format!(
            "{} has no aws_access_key_id and aws_secret_access_key in profile [{profile}]",
            file.display()
        )),
    }
}

fn no_credentials() -> String {
    "no S3 credentials: set access_key_id and secret_access_key, or the AWS_ACCESS_KEY_ID and \
     AWS_SECRET_ACCESS_KEY environment variables, or a profile in ~/.aws/credentials"
        .into()
}

/// The `key = value` lines of `[section]` in an ini file (`;`/`#` comments).
fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if inside && let Some((k, v)) = line.split_once('=') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> S3Config {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn validation_names_the_field() {
        let ok = config("region = \"eu-west-1\"\nbucket = \"backups\"");
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.endpoint(), "https://s3.eu-west-1.amazonaws.com");
        assert_eq!(ok.addressing(), Addressing::VirtualHost);
        let cases = [
            ("bucket = \"\"", "bucket"),
            ("bucket = \"a/b\"", "bucket"),
            ("bucket = \"Upper_Case\"", "bucket"),
            (
                "bucket = \"b00\"\nstorage_class = \"COLD\"",
                "storage_class",
            ),
            ("bucket = \"b00\"\nmax_parts = 0", "max_parts"),
            ("bucket = \"b00\"\nkms_key_id = \"k\"", "kms_key_id"),
            (
                "bucket = \"b00\"\naccess_key_id = \"AKIA\"",
                "secret_access_key",
            ),
            ("bucket = \"b00\"\nendpoint = \"ftp://x\"", "endpoint"),
            ("bucket = \"b00\"\nprefix = \"a//b\"", "prefix"),
        ];
        for (extra, field) in cases {
            let c = config(&format!("region = \"r\"\n{extra}"));
            assert_eq!(c.validate().unwrap_err().0, field, "{extra}");
        }
        let path = config(
            "region = \"us-east-1\"\nbucket = \"Upper_Case\"\naddressing = \"path\"\n\
             sse = \"aws:kms\"\nkms_key_id = \"k\"\nstorage_class = \"INTELLIGENT_TIERING\"",
        );
        assert_eq!(path.validate(), Ok(()));
        let local =
            config("region = \"r\"\nbucket = \"b00\"\nendpoint = \"http://127.0.0.1:9000\"");
        assert_eq!(local.addressing(), Addressing::Path);
        assert!(
            toml::from_str::<S3Config>("region = \"r\"\nbucket = \"b\"\nretention = 3").is_err()
        );
    }

    #[test]
    fn credentials_come_from_config_then_env_then_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = DEF\naws_secret_access_key = defsecret123\n\
             [work]\n; comment\naws_access_key_id=WORK\naws_secret_access_key=worksecret123\n\
             aws_session_token = worktoken123\n",
        )
        .unwrap();
        let c = config("region = \"r\"\nbucket = \"b00\"");
        let file_s = file.to_string_lossy().into_owned();
        let env = |vars: Vec<(&'static str, String)>| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
            }
        };
        let from_file = resolve_keys(
            &c,
            &env(vec![("AWS_SHARED_CREDENTIALS_FILE", file_s.clone())]),
        )
        .unwrap();
        assert_eq!(from_file.id, "DEF");
        let work = resolve_keys(
            &c,
            &env(vec![
                ("AWS_SHARED_CREDENTIALS_FILE", file_s.clone()),
                ("AWS_PROFILE", "work".into()),
            ]),
        )
        .unwrap();
        assert_eq!(work.id, "WORK");
        assert_eq!(work.token.unwrap().expose(), "worktoken123");
        let from_env = resolve_keys(
            &c,
            &env(vec![
                ("AWS_SHARED_CREDENTIALS_FILE", file_s.clone()),
                ("AWS_ACCESS_KEY_ID", "ENV".into()),
                ("AWS_SECRET_ACCESS_KEY", "envsecret123".into()),
            ]),
        )
        .unwrap();
        assert_eq!(from_env.id, "ENV");
        let mut configured = c.clone();
        configured.access_key_id = Some("CFG".into());
        configured.secret_access_key = Some(Secret::new("cfgsecret123"));
        let from_config =
            resolve_keys(&configured, &env(vec![("AWS_ACCESS_KEY_ID", "ENV".into())])).unwrap();
        assert_eq!(from_config.id, "CFG");
        let none = resolve_keys(
            &c,
            &env(vec![("HOME", dir.path().to_string_lossy().into())]),
        );
        let Err(message) = none else {
            panic!("no credentials anywhere")
        };
        assert!(message.contains("no S3 credentials"), "{message}");
        // A second provider's own variables (the seed's EU_PROVIDER_*), before AWS's.
        let mut eu = c.clone();
        eu.credentials_env = Some("EU_PROVIDER".into());
        let from_eu = resolve_keys(
            &eu,
            &env(vec![
                ("AWS_ACCESS_KEY_ID", "ENV".into()),
                ("AWS_SECRET_ACCESS_KEY", "envsecret123".into()),
                ("EU_PROVIDER_ACCESS_KEY", "SCW".into()),
                ("EU_PROVIDER_SECRET_KEY", "scwsecret123".into()),
            ]),
        )
        .unwrap();
        assert_eq!(from_eu.id, "SCW");
        assert_eq!(
            from_eu.from,
            "EU_PROVIDER_ACCESS_KEY/EU_PROVIDER_SECRET_KEY"
        );
        let Err(missing) = resolve_keys(&eu, &env(vec![("AWS_ACCESS_KEY_ID", "ENV".into())]))
        else {
            panic!("the named variables are required")
        };
        assert!(missing.contains("EU_PROVIDER_SECRET_KEY"), "{missing}");
    }
}
