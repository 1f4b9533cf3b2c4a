//! The one mechanism that keeps secrets out of text that leaves the process: every [`Secret`]
//! is registered here when it is made (from configuration, a credential file, a token
//! endpoint's answer), and the sinks — the log writer, the error texts the store keeps, the API's
//! problem details — pass their text through [`redact`]. No call site has to remember.

use std::{
    borrow::Cow,
    fmt,
    io::{self, Write},
    sync::{LazyLock, RwLock},
};

/// Shorter values are not secrets worth the false positives (a 4-digit PIN would blank every
/// number that contains it).
const MIN_LEN: usize = 8;

/// What stands in for a secret.
pub const MASK: &str = "***";

/// How many short-lived secrets (access tokens, signed assertions, upload URLs) are
/// remembered. They are made for as long as offsite runs, some every hour; the least recently
/// made (long expired) make room. Secrets from the configuration are kept apart and never
/// forgotten.
const CAPACITY: usize = 256;

#[derive(Default)]
struct Registry {
    /// Secrets from the configuration: few, and needed for as long as the process runs.
    kept: Vec<String>,
    /// Short-lived ones, least recently made first.
    made: std::collections::VecDeque<String>,
    /// The same, longest first, so a secret that contains another is masked whole.
    by_length: Vec<String>,
}

static SECRETS: LazyLock<RwLock<Registry>> = LazyLock::new(Default::default);

/// Remembers a short-lived `secret` so that it never appears in what [`redact`] cleans. Made
/// again, it counts as new.
pub fn register(secret: &str) {
    remember(secret, false);
}

/// Remembers a secret from the configuration, for the life of the process.
pub fn register_kept(secret: &str) {
    remember(secret, true);
}

fn remember(secret: &str, kept: bool) {
    if let Ok(mut all) = SECRETS.write() {
        all.remember(secret, kept);
    }
}

impl Registry {
    fn remember(&mut self, secret: &str, kept: bool) {
        if secret.len() < MIN_LEN || self.kept.iter().any(|s| s == secret) {
            return;
        }
        if let Some(i) = self.made.iter().position(|s| s == secret) {
            self.made.remove(i);
        }
        if kept {
            self.kept.push(secret.to_string());
        } else {
            self.made.push_back(secret.to_string());
            if self.made.len() > CAPACITY {
                self.made.pop_front();
            }
        }
        let mut by_length: Vec<String> = self
            .kept
            .iter()
            .chain(self.made.iter())
            .flat_map(|s| spellings(s))
            .collect();
        by_length.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        by_length.dedup();
        self.by_length = by_length;
    }

    fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in self.by_length.iter() {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
        out
    }
}

/// A secret as it may be written where it leaves the process: the sinks mask text after it is
/// formatted, and a password with a `"` or `\` in it reads `\"` in a JSON log line, in a
/// `Debug`-printed error and in syslog's structured data, and `%22` in a URL or form body.
fn spellings(secret: &str) -> Vec<String> {
    let quoted = |s: String| s[1..s.len() - 1].to_string();
    let json = serde_json::to_string(secret)
        .map(quoted)
        .unwrap_or_default();
    let debug = quoted(format!("{secret:?}"));
    let syslog: String = secret
        .chars()
        .flat_map(|c| {
            let escape = matches!(c, '"' | '\\' | ']');
            escape.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect();
    let percent: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let path = percent.replace('+', "%20");
    let mut all = vec![secret.to_string(), json, debug, syslog, percent, path];
    all.retain(|s| s.len() >= MIN_LEN);
    all.sort();
    all.dedup();
    all
}

/// URL query parameters that are capabilities by themselves, masked wherever they appear even
/// when this process never registered their value: a SharePoint upload session's `tempauth`
/// (its `uploadUrl` sits in job checkpoints, which the API and the CLI show from the database).
const CAPABILITY_PARAMS: &[&str] = &["tempauth="];

/// `text` with every registered secret, and the value of every capability parameter, replaced
/// by `***`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = match SECRETS.read() {
        Ok(all) => all.mask(text),
        Err(_) => Cow::Borrowed(text),
    };
    for param in CAPABILITY_PARAMS {
        if out.contains(param) {
            out = Cow::Owned(mask_param(&out, param));
        }
    }
    out
}

/// Replaces the value after each `?param` / `&param` up to the next delimiter.
fn mask_param(text: &str, param: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(param) {
        let at_param = i == 0 || matches!(rest.as_bytes()[i - 1], b'?' | b'&' | b';');
        let value_start = i + param.len();
        out.push_str(&rest[..value_start]);
        rest = &rest[value_start..];
        if at_param {
            let end = rest
                .find(|c: char| {
                    matches!(c, '&' | '"' | '\'' | '#' | '<' | '>') || c.is_whitespace()
                })
                .unwrap_or(rest.len());
            if end > 0 {
                out.push_str(MASK);
            }
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

/// A JSON document (a job's checkpoint) with [`redact`] applied to every string in it.
pub fn redact_json(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => match redact(&s) {
            Cow::Borrowed(_) => Value::String(s),
            Cow::Owned(masked) => Value::String(masked),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(redact_json).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, redact_json(v))).collect())
        }
        other => other,
    }
}

/// Standard error for the log, with secrets masked. The formatter writes each event with one
/// `write_all`, so a secret never straddles two writes.
pub struct Stderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = RedactingWriter<io::Stderr>;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter(io::stderr())
    }
}

pub struct RedactingWriter<W>(pub W);

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(redact(text).as_bytes())?,
            Err(_) => self
                .0
                .write_all(redact(&String::from_utf8_lossy(buf)).as_bytes())?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// A value that must never be printed: `Debug` shows `***`, and every secret made is
/// registered with this module, which masks it in logs, stored errors and API answers. One
/// read from the configuration (deserialized) is kept for the life of the process; one made
/// at run time (`Secret::new`: a token, an upload URL) is short-lived.
#[derive(Clone, serde::Deserialize, PartialEq, Eq)]
#[serde(from = "String")]
pub struct Secret(String);

impl From<String> for Secret {
    fn from(s: String) -> Self {
        register_kept(&s);
        Secret(s)
    }
}

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        let s = s.into();
        register(&s);
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Whether two byte strings are equal, in time that depends only on their length (tokens,
/// OAuth states, signatures).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_secrets_outlive_any_number_of_short_lived_ones() {
        // A registry of its own: flooding the process-wide one would push out what other
        // tests registered.
        let mut reg = Registry::default();
        reg.remember("configured-client-secret-for-test", true);
        reg.remember("early-token-made-again-later-0001", false);
        for i in 0..(2 * CAPACITY) {
            reg.remember(&format!("hourly-access-token-for-test-{i:05}"), false);
            if i == CAPACITY + CAPACITY / 2 {
                // Made again: counts as new, so it is not the first to go.
                reg.remember("early-token-made-again-later-0001", false);
            }
        }
        assert_eq!(
            reg.mask("configured-client-secret-for-test early-token-made-again-later-0001"),
            "*** ***"
        );
        assert_eq!(
            reg.mask("hourly-access-token-for-test-00000"),
            "hourly-access-token-for-test-00000",
            "the oldest short-lived ones make room"
        );
        assert_eq!(reg.made.len(), CAPACITY);
    }

    #[test]
    fn a_secret_is_masked_however_a_sink_escaped_it() {
        let mut reg = Registry::default();
        // "zebra" appears nowhere else in the texts below.
        let secret = r#"pa"ss\wo]rd zebra/ü"#;
        reg.remember(secret, true);
        let json = serde_json::json!({ "error": format!("login failed for {secret}") });
        let debug = format!("{:?}", format!("password={secret}"));
        let syslog = format!(
            "[offsite@32473 error=\"{}\"]",
            secret
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace(']', "\\]")
        );
        let form: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("client_secret", secret)
            .finish();
        let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        let url = format!("postgres://u:{}@db/x", encoded.replace('+', "%20"));
        for text in [json.to_string(), debug, syslog, form, url] {
            assert!(text.contains("zebra"), "{text}");
            let masked = reg.mask(&text);
            assert!(
                masked.contains(MASK) && !masked.contains("zebra"),
                "{text} → {masked}"
            );
        }
    }

    #[test]
    fn a_deserialized_secret_is_kept() {
        let s: Secret = serde_json::from_str("\"configured-secret-for-kept-test\"").unwrap();
        let all = SECRETS.read().unwrap();
        assert!(all.kept.iter().any(|k| k == s.expose()));
    }

    #[test]
    fn registered_secrets_are_masked_wherever_they_appear() {
        register("s3cr3t-token-for-redact-test");
        register("s3cr3t-token");
        register("short");
        assert_eq!(
            redact("Authorization: Bearer s3cr3t-token-for-redact-test; again s3cr3t-token"),
            "Authorization: Bearer ***; again ***"
        );
        assert_eq!(redact("short stays"), "short stays");
        let mut out = RedactingWriter(Vec::new());
        out.write_all(b"token=s3cr3t-token-for-redact-test\n")
            .unwrap();
        assert_eq!(out.0, b"token=***\n");
    }

    #[test]
    fn capability_parameters_are_masked_unregistered() {
        let url = "https://contoso.sharepoint.com/sites/B/_api/v2.0/drives/b!x/items/01A/uploadSession?guid='1f'&overwrite=False&rename=True&dc=0&tempauth=eyJ0eXAiOiJKV1Qi.eyJhdWQi.sig";
        let masked = redact(url);
        assert!(masked.ends_with("&dc=0&tempauth=***"), "{masked}");
        assert_eq!(
            redact("say tempauth=x and a?tempauth=abc&b=1 \"?tempauth=z\""),
            "say tempauth=x and a?tempauth=***&b=1 \"?tempauth=***\""
        );
        let checkpoint =
            serde_json::json!({"session": {"upload_url": url, "size": 3}, "list": [url]});
        let shown = redact_json(checkpoint).to_string();
        assert!(
            !shown.contains("eyJ0eXAi") && shown.contains("\"size\":3"),
            "{shown}"
        );
    }
}
