//! A stand-in for Home Assistant's ingress proxy (the Supervisor's `api/ingress.py`): the
//! browser asks for `/api/hassio_ingress/<token>/…`; the proxy strips that prefix, forwards the
//! request to the add-on's ingress port from its own address (in Home Assistant
//! `172.30.32.2`; here a second loopback address such as `127.0.0.2`), adds `X-Ingress-Path`,
//! the `X-Remote-User-*` headers and `X-Forwarded-*`, and streams the answer back. Anything
//! outside the prefix is a 401, as in Home Assistant without a valid ingress session.

use std::net::{IpAddr, SocketAddr};

use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use futures::TryStreamExt;

use super::fault::{ServerGuard, random_token, serve};

pub struct IngressProxy {
    server: ServerGuard,
    prefix: String,
}

#[derive(Clone)]
struct Upstream {
    addr: SocketAddr,
    prefix: String,
    http: reqwest::Client,
}

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl IngressProxy {
    /// Proxies to the add-on at `upstream`, connecting from `from`.
    pub async fn start(upstream: SocketAddr, from: IpAddr) -> Self {
        let prefix = format!("/api/hassio_ingress/{}", random_token(43));
        let http = reqwest::Client::builder()
            .local_address(from)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("ingress proxy client");
        let state = Upstream {
            addr: upstream,
            prefix: prefix.clone(),
            http,
        };
        let server = serve(Router::new().fallback(forward).with_state(state)).await;
        Self { server, prefix }
    }

    /// The panel's address as the browser sees it (with a trailing slash, like Home Assistant).
    pub fn url(&self) -> String {
        format!("{}{}/", self.server.base_url(), self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn origin(&self) -> String {
        self.server.base_url()
    }
}

async fn forward(State(up): State<Upstream>, req: Request) -> Response {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let Some(rest) = path_and_query.strip_prefix(&up.prefix) else {
        return (StatusCode::UNAUTHORIZED, "401: Unauthorized").into_response();
    };
    let rest = if rest.starts_with('/') {
        rest.to_string()
    } else {
        format!("/{rest}")
    };
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut out = up
        .http
        .request(req.method().clone(), format!("http://{}{rest}", up.addr));
    for (name, value) in req.headers() {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || n == "host" || n == "content-length" {
            continue;
        }
        out = out.header(name, value);
    }
    out = out
        .header("x-ingress-path", &up.prefix)
        .header("x-remote-user-id", "2f0b6f1a9c7d4e3b8a5c1d2e3f405162")
        .header("x-remote-user-name", "owner")
        .header("x-remote-user-display-name", "Home Owner")
        .header("x-forwarded-for", "127.0.0.1")
        .header("x-forwarded-host", host)
        .header("x-forwarded-proto", "http")
        .header("x-hass-source", "core.ingress");
    let body = reqwest::Body::wrap_stream(req.into_body().into_data_stream());
    let resp = match out.body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            return (StatusCode::BAD_GATEWAY, format!("502: Bad Gateway ({e})")).into_response();
        }
    };
    let mut builder = Response::builder().status(resp.status().as_u16());
    for (name, value) in resp.headers() {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            builder = builder.header(n, v);
        }
    }
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}
