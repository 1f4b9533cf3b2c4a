//! Who is asking: the API token (configured, or generated on first start and kept in the data
//! directory), Home Assistant's ingress proxy, and — only when the user says so — a browser
//! on this machine.
//!
//! An address proves nothing about who is asking: a reverse proxy on the same machine turns
//! every remote user into a loopback peer, and with a plain `proxy_pass` it adds no header that
//! says so. So standalone, everything that reads job data or changes state needs the token
//! unless `api.trust_loopback` is set.

use std::{net::SocketAddr, path::Path};

use axum::http::{HeaderMap, header};

use crate::config::{Config, Secret};

/// The file in the data directory holding the generated token.
pub const TOKEN_FILE: &str = "api-token";

/// Where the API token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `api.token` in the configuration.
    Configured,
    /// `<data_dir>/api-token`, made on an earlier start.
    Kept,
    /// `<data_dir>/api-token`, made now.
    Generated,
}

/// The token the API and panel accept: `api.token`, else the one kept in
/// `<data_dir>/api-token` (created owner-only on first start).
pub fn load_or_create_token(config: &Config) -> std::io::Result<(Secret, TokenSource)> {
    if let Some(t) = &config.api.token {
        return Ok((t.clone(), TokenSource::Configured));
    }
    let path = config.data_dir.join(TOKEN_FILE);
    if let Some(t) = read_token(&path)? {
        return Ok((t, TokenSource::Kept));
    }
    let token: String = {
        let bytes: [u8; 24] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    write_owner_only(&path, token.as_bytes())?;
    Ok((Secret::new(token), TokenSource::Generated))
}

/// The kept token, if the file exists and holds one.
pub fn read_token(path: &Path) -> std::io::Result<Option<Secret>> {
    match std::fs::read_to_string(path) {
        Ok(s) if s.trim().len() >= 16 => Ok(Some(Secret::new(s.trim()))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_owner_only(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::File::options();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// The code in the sign-in link the start-up log prints: good for one sign-in, in this
/// process. The log then never holds a credential that still works (nor the API token itself,
/// which the log masks like every secret); `?token=` also takes the API token.
#[derive(Debug)]
pub struct SignInCode(std::sync::Mutex<Option<String>>);

impl SignInCode {
    pub fn generate() -> SignInCode {
        let bytes: [u8; 16] = rand::random();
        SignInCode(std::sync::Mutex::new(Some(
            bytes.iter().map(|b| format!("{b:02x}")).collect(),
        )))
    }

    /// No link (the add-on, where only ingress may connect).
    pub fn none() -> SignInCode {
        SignInCode(std::sync::Mutex::new(None))
    }

    /// The code, for the log line.
    pub fn peek(&self) -> Option<String> {
        self.0.lock().ok()?.clone()
    }

    /// Whether `given` is the code; if so it is used up.
    pub fn redeem(&self, given: &str) -> bool {
        let Ok(mut code) = self.0.lock() else {
            return false;
        };
        if code
            .as_deref()
            .is_some_and(|c| ct_eq(c.as_bytes(), given.as_bytes()))
        {
            *code = None;
            return true;
        }
        false
    }
}

/// The link that signs a browser in to the panel: the panel's address with the code as
/// `?token=`, which sets the session cookie and redirects to the plain address.
pub fn sign_in_link(listen: SocketAddr, code: &str) -> String {
    format!("{}?token={code}", panel_url(listen))
}

/// The panel's address for a browser on this machine.
pub fn panel_url(listen: SocketAddr) -> String {
    let ip = listen.ip();
    let host = if ip.is_unspecified() {
        if ip.is_ipv4() {
            "127.0.0.1".to_string()
        } else {
            "[::1]".to_string()
        }
    } else if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    format!("http://{host}:{}/", listen.port())
}

pub(crate) use crate::redact::ct_eq;

/// The credentials of `Authorization: <scheme> <credentials>` when the scheme is `Bearer`
/// (compared without regard to case, RFC 9110 §11.1).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}

/// Whether the request carries `Authorization: Bearer <token>` (compared in constant time).
pub(crate) fn bearer_matches(headers: &HeaderMap, token: &Secret) -> bool {
    bearer(headers).is_some_and(|given| ct_eq(given.as_bytes(), token.expose().as_bytes()))
}

/// Whether a proxy says it relayed this request. Only a hint: a plain `proxy_pass` says
/// nothing, which is why loopback is trusted only when configured.
fn relayed(headers: &HeaderMap) -> bool {
    [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-real-ip",
        "via",
    ]
    .iter()
    .any(|h| headers.contains_key(*h))
}

/// Whether this request may go without the token.
///
/// - Home Assistant's ingress proxy (an `api.allow_from` address, request carrying
///   `X-Ingress-Path`): Home Assistant has authenticated the user. A standalone reverse proxy
///   listed in `allow_from` does not make its users trusted.
/// - With `api.trust_loopback` only: a loopback peer that no proxy says it relayed, asking for
///   a loopback host name (a page elsewhere that rebinds its own DNS name to 127.0.0.1 still
///   sends its own name in `Host`).
pub(crate) fn trusted_without_token(
    config: &Config,
    peer: &SocketAddr,
    headers: &HeaderMap,
) -> bool {
    let ip = peer.ip().to_canonical();
    let allow_from = &config.api.allow_from;
    if allow_from.iter().any(|a| a.to_canonical() == ip)
        && !super::ingress_prefix(headers).is_empty()
    {
        return true;
    }
    config.api.trust_loopback && ip.is_loopback() && !relayed(headers) && loopback_host(headers)
}

/// Whether `Host` names this machine: `localhost`, a loopback address, with any port.
pub(crate) fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    // `name`, `name:port`, `[v6]` or `[v6]:port`, with a numeric port; anything else is not
    // a Host a browser sends.
    let (name, port) = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((name, rest)) => (
                name,
                rest.strip_prefix(':')
                    .or(Some(rest).filter(|r| r.is_empty())),
            ),
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, Some("")),
        },
    };
    let port_ok = port.is_some_and(|p| p.is_empty() || p.parse::<u16>().is_ok());
    if !port_ok {
        return false;
    }
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let token = Secret::new("0123456789abcdef0123");
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("{scheme} 0123456789abcdef0123")).unwrap(),
            );
            assert!(bearer_matches(&h, &token), "{scheme}");
        }
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic 0123456789abcdef0123"),
        );
        assert!(!bearer_matches(&h, &token));
        assert!(!bearer_matches(&HeaderMap::new(), &token));
    }

    #[test]
    fn the_sign_in_link_names_a_reachable_host() {
        assert_eq!(
            sign_in_link("0.0.0.0:8099".parse().unwrap(), "abc"),
            "http://127.0.0.1:8099/?token=abc"
        );
        assert_eq!(
            sign_in_link("[::1]:1".parse().unwrap(), "abc"),
            "http://[::1]:1/?token=abc"
        );
    }

    #[test]
    fn the_sign_in_code_works_once() {
        let code = SignInCode::generate();
        let c = code.peek().unwrap();
        assert!(!code.redeem("wrong"));
        assert!(code.redeem(&c));
        assert!(!code.redeem(&c), "used up");
        assert!(!SignInCode::none().redeem(""));
    }

    #[test]
    fn only_loopback_host_names_count_as_this_machine() {
        let host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_str(h).unwrap());
            loopback_host(&m)
        };
        for ok in [
            "localhost",
            "LOCALHOST:8099",
            "127.0.0.1:8099",
            "127.9.9.9",
            "[::1]",
            "[::1]:8099",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8099",
            "127.0.0.1:8099@evil",
            "[::1]evil.example",
            "[::1",
            "localhost:port",
            "10.0.0.1:8099",
        ] {
            assert!(!host(bad), "{bad}");
        }
        assert!(!loopback_host(&HeaderMap::new()), "no Host at all");
    }
}
