//! A real S3 server for the tests: moto (`pip install 'moto[server]==5.1.22'`; 5.2.x answers
//! ListParts with a root element aws-sdk-s3 cannot read, and is not what CI pins), started as
//! `moto_server -H 127.0.0.1 -p PORT`, plus a fault-injecting proxy in front of it.
//!
//! One moto process is shared by the tests that run at the same time (each uses its own
//! bucket); it stops when the last of them drops its handle. moto keeps its state in memory and
//! does not check signatures, so the proxy can forward presigned requests unchanged.

use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::fault::{ConnHandle, ServerGuard, random_token, serve};

/// How long moto may take to answer after it was started (it takes ~1.5 s on an idle machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running moto_server.
#[derive(Debug)]
pub struct MotoProcess {
    child: Mutex<Child>,
    addr: SocketAddr,
}

impl Drop for MotoProcess {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

static SHARED: Mutex<Weak<MotoProcess>> = Mutex::new(Weak::new());

/// True when moto_server is on PATH; otherwise says the test was skipped (and fails under CI).
fn have_moto() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let found = *FOUND.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| {
                std::fs::metadata(dir.join("moto_server"))
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
        })
    });
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the S3 tests: moto_server is not on PATH \
             (pip install 'moto[server]==5.1.22')"
        );
        eprintln!("skipped: moto_server is not on PATH (pip install 'moto[server]==5.1.22')");
    }
    found
}

fn start_moto() -> MotoProcess {
    // A free port: bind, read it, release it for moto.
    let port = StdTcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let moto = MotoProcess {
        child: Mutex::new(child),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if answers_http(moto.addr) {
            return moto;
        }
        if let Ok(Some(status)) = moto.child.lock().unwrap().try_wait() {
            panic!("moto_server exited before it answered: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "moto_server did not answer on {} within {START_TIMEOUT:?}",
            moto.addr
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP exchange on a fresh connection: true once the server answers with a status line.
fn answers_http(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = StdTcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

/// A bucket of its own on the shared moto.
#[derive(Debug)]
pub struct Moto {
    process: Arc<MotoProcess>,
    pub bucket: String,
    http: reqwest::Client,
}

impl Moto {
    /// None (the test is skipped) when moto_server is not installed outside CI.
    pub async fn start() -> Option<Moto> {
        if !have_moto() {
            return None;
        }
        let process = tokio::task::spawn_blocking(|| {
            let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = shared.upgrade() {
                return p;
            }
            let p = Arc::new(start_moto());
            *shared = Arc::downgrade(&p);
            p
        })
        .await
        .unwrap();
        let moto = Moto {
            process,
            bucket: format!("offsite-{}", random_token(10).to_lowercase()),
            http: reqwest::Client::new(),
        };
        moto.create_bucket(&moto.bucket).await;
        Some(moto)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.process.addr)
    }

    pub async fn create_bucket(&self, name: &str) {
        let status = self
            .http
            .put(format!("{}/{name}", self.endpoint()))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_success(), "create bucket {name}: {status}");
    }

    pub async fn set_versioning(&self, enabled: bool) {
        let status = if enabled { "Enabled" } else { "Suspended" };
        let body = format!(
            "<VersioningConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Status>{status}</Status></VersioningConfiguration>"
        );
        let reply = self
            .http
            .put(format!("{}/{}?versioning", self.endpoint(), self.bucket))
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(
            reply.status().is_success(),
            "set versioning: {}",
            reply.status()
        );
    }

    /// Plain GET of a bucket sub-resource or object, straight from moto (no proxy).
    pub async fn get(&self, path_and_query: &str) -> (StatusCode, String) {
        let reply = self
            .http
            .get(format!(
                "{}/{}{path_and_query}",
                self.endpoint(),
                self.bucket
            ))
            .send()
            .await
            .unwrap();
        (
            StatusCode::from_u16(reply.status().as_u16()).unwrap(),
            reply.text().await.unwrap(),
        )
    }

    /// Aborts every multipart upload in the bucket, as a lifecycle rule or another client would.
    pub async fn abort_all_uploads(&self) {
        let (_, listing) = self.get("?uploads").await;
        let field = |block: &str, tag: &str| {
            let open = format!("<{tag}>");
            let start = block.find(&open)? + open.len();
            let end = block[start..].find(&format!("</{tag}>"))? + start;
            Some(block[start..end].to_string())
        };
        for block in listing.split("<Upload>").skip(1) {
            let (Some(key), Some(id)) = (field(block, "Key"), field(block, "UploadId")) else {
                continue;
            };
            // moto answers 500 now and then when the abort meets a part upload in flight
            // (seen once in a full run on a loaded machine); a lifecycle rule or a client
            // asks again, and so does this, a few times.
            let mut tries = 0;
            loop {
                let reply = self
                    .http
                    .delete(format!(
                        "{}/{}/{key}?uploadId={id}",
                        self.endpoint(),
                        self.bucket
                    ))
                    .send()
                    .await
                    .unwrap();
                let status = reply.status();
                if status.is_success() {
                    break;
                }
                tries += 1;
                assert!(
                    status.is_server_error() && tries < 5,
                    "abort {key}: {status} after {tries} tries"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }

    /// Puts an object directly (for listing tests).
    pub async fn put(&self, key: &str, body: &'static [u8]) {
        let reply = self
            .http
            .put(format!("{}/{}/{key}", self.endpoint(), self.bucket))
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(reply.status().is_success(), "put {key}: {}", reply.status());
    }
}

// -- fault-injecting proxy ------------------------------------------------------------------------

/// What the proxy does instead of forwarding.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 503 SlowDown with `Retry-After: secs`.
    SlowDown { retry_after_secs: u64 },
    /// 500 InternalError.
    InternalError,
    /// 200 OK whose body is an InternalError document (S3 does this for
    /// CompleteMultipartUpload); the request is forwarded first.
    OkWithError,
    /// The TCP connection is cut once the request has been read.
    Cut,
    /// Any S3 error document (403 AccessDenied, 404 NoSuchUpload, ...).
    Error { status: u16, code: &'static str },
    /// Reads the request and never answers.
    Hang,
    /// 429 SlowDown with `Retry-After: secs` (what some S3-compatible providers send).
    TooManyRequests { retry_after_secs: u64 },
    /// The request is forwarded and stored, then answered 500: the server is further along
    /// than the client heard.
    AcceptThenFail,
    /// The request's body is forwarded with its first byte flipped (headers unchanged).
    CorruptBody,
}

#[derive(Debug)]
struct Rule {
    method: Method,
    /// A query parameter the request must carry ("uploadId", "partNumber", "uploads", ...).
    query_has: &'static str,
    /// Fires on the n-th matching request from when it was added.
    remaining: u64,
    fault: Fault,
}

#[derive(Debug, Default)]
struct ProxyState {
    upstream: String,
    rules: Mutex<Vec<Rule>>,
    http: reqwest::Client,
    /// Body bytes of every PUT that reached the proxy (forwarded or not).
    put_bytes: std::sync::atomic::AtomicU64,
}

/// A loopback proxy in front of moto that answers chosen requests itself.
#[derive(Debug)]
pub struct FaultProxy {
    server: ServerGuard,
    state: Arc<ProxyState>,
}

impl FaultProxy {
    pub async fn start(upstream: String) -> FaultProxy {
        let state = Arc::new(ProxyState {
            upstream,
            ..Default::default()
        });
        let router = Router::new().fallback(proxy).with_state(state.clone());
        FaultProxy {
            server: serve(router).await,
            state,
        }
    }

    pub fn endpoint(&self) -> String {
        self.server.base_url()
    }

    /// The `nth` (from 1) request from now with `method` whose query has `query_has` gets
    /// `fault`.
    pub fn fail(&self, method: Method, query_has: &'static str, nth: u64, fault: Fault) {
        assert!(nth >= 1);
        self.state.rules.lock().unwrap().push(Rule {
            method,
            query_has,
            remaining: nth,
            fault,
        });
    }

    /// Body bytes of every PUT (object or part uploads) received so far.
    pub fn put_bytes(&self) -> u64 {
        self.state
            .put_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many faults have not fired yet.
    pub fn pending(&self) -> usize {
        self.state.rules.lock().unwrap().len()
    }
}

fn fault_for(state: &ProxyState, method: &Method, query: &str) -> Option<Fault> {
    let mut rules = state.rules.lock().unwrap();
    let names: Vec<&str> = query
        .split('&')
        .map(|kv| kv.split('=').next().unwrap_or(""))
        .collect();
    let mut hit = None;
    rules.retain_mut(|rule| {
        if rule.method != *method || !names.contains(&rule.query_has) {
            return true;
        }
        rule.remaining -= 1;
        if rule.remaining == 0 {
            hit.get_or_insert(rule.fault.clone());
            return false;
        }
        true
    });
    hit
}

fn s3_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>FAULT</RequestId></Error>"
    );
    (status, [("content-type", "application/xml")], body).into_response()
}

async fn proxy(
    State(state): State<Arc<ProxyState>>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(mut body) = axum::body::to_bytes(body, usize::MAX).await else {
        // The client gave up mid-body (its own connection was cut).
        return StatusCode::BAD_REQUEST.into_response();
    };
    if parts.method == Method::PUT {
        state
            .put_bytes
            .fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
    let query = parts.uri.query().unwrap_or("").to_string();
    let fault = fault_for(&state, &parts.method, &query);
    match fault {
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            let mut r = s3_error(
                StatusCode::TOO_MANY_REQUESTS,
                "SlowDown",
                "Please reduce your request rate.",
            );
            r.headers_mut()
                .insert("retry-after", retry_after_secs.to_string().parse().unwrap());
            return r;
        }
        Some(Fault::CorruptBody) if !body.is_empty() => {
            let mut v = body.to_vec();
            v[0] ^= 0xff;
            body = Bytes::from(v);
        }
        Some(Fault::SlowDown { retry_after_secs }) => {
            let mut r = s3_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                "Please reduce your request rate.",
            );
            r.headers_mut()
                .insert("retry-after", retry_after_secs.to_string().parse().unwrap());
            return r;
        }
        Some(Fault::InternalError) => {
            return s3_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
            );
        }
        Some(Fault::Error { status, code }) => {
            return s3_error(StatusCode::from_u16(status).unwrap(), code, "injected");
        }
        Some(Fault::Hang) => std::future::pending::<()>().await,
        Some(Fault::Cut) => {
            conn.kill();
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
        Some(Fault::OkWithError | Fault::AcceptThenFail | Fault::CorruptBody) | None => {}
    }
    let url = format!(
        "{}{}",
        state.upstream,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap();
    let mut forward = state.http.request(method, url);
    for (name, value) in parts.headers.iter() {
        if name != "host" && name != "content-length" {
            forward = forward.header(name.as_str(), value.as_bytes());
        }
    }
    let reply = forward.body(body).send().await.unwrap();
    if matches!(fault, Some(Fault::AcceptThenFail)) {
        let _ = reply.bytes().await;
        return s3_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "We encountered an internal error. Please try again.",
        );
    }
    if matches!(fault, Some(Fault::OkWithError)) {
        let _ = reply.bytes().await;
        let mut r = s3_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "We encountered an internal error. Please try again.",
        );
        *r.status_mut() = StatusCode::OK;
        return r;
    }
    let status = StatusCode::from_u16(reply.status().as_u16()).unwrap();
    let mut headers = HeaderMap::new();
    for (name, value) in reply.headers() {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            headers.insert(
                axum::http::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap(),
                axum::http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
        }
    }
    let is_head = parts.method == Method::HEAD;
    let length = reply.headers().get("content-length").cloned();
    let body = reply.bytes().await.unwrap();
    if is_head && let Some(length) = length {
        // A HEAD answer has no body but keeps the object's length.
        headers.insert(
            "content-length",
            axum::http::HeaderValue::from_bytes(length.as_bytes()).unwrap(),
        );
    }
    (status, headers, body).into_response()
}
