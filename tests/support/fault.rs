//! Plumbing shared by the fakes: a loopback server whose handlers can cut
//! their own TCP connection, and "the n-th event from now" fault schedules.

use std::net::{Shutdown, SocketAddr, TcpStream as StdTcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Per-connection handle, available to handlers as `ConnectInfo<ConnHandle>`.
///
/// It holds a duplicate of the connection's socket so that a handler can
/// simulate a network failure: `kill()` shuts the socket down in both
/// directions, so the client sees its request die without any response.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    socket: Option<Arc<StdTcpStream>>,
}

impl ConnHandle {
    /// Abort the connection: no status line will ever reach the client.
    pub fn kill(&self) {
        if let Some(socket) = &self.socket {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        // A dup()ed descriptor refers to the same socket, so shutting it down
        // affects the connection hyper is serving.
        let socket = stream
            .io()
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .map(|fd| Arc::new(StdTcpStream::from(fd)));
        Self { socket }
    }
}

/// A running fake server; the accept loop stops when this is dropped.
#[derive(Debug)]
pub struct ServerGuard {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ServerGuard {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve `router` on an ephemeral loopback port.
pub async fn serve(router: Router) -> ServerGuard {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0 for a fake server");
    let addr = listener.local_addr().expect("local addr of fake server");
    let service = router.into_make_service_with_connect_info::<ConnHandle>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, service).await;
    });
    ServerGuard { addr, task }
}

/// Faults scheduled against a stream of events ("the 3rd request from now").
///
/// Every event calls [`Countdown::tick`]; an item scheduled with `at(n, ..)`
/// is returned by the n-th tick after scheduling. When several items fall on
/// the same tick the one scheduled first wins and the others are discarded.
#[derive(Debug)]
pub struct Countdown<T> {
    ticks: u64,
    due: Vec<(u64, T)>,
}

impl<T> Default for Countdown<T> {
    fn default() -> Self {
        Self {
            ticks: 0,
            due: Vec::new(),
        }
    }
}

impl<T> Countdown<T> {
    /// Schedule `item` for the `n`-th event from now (`n` starts at 1).
    pub fn at(&mut self, n: u64, item: T) {
        assert!(n >= 1, "fault schedules count from 1 (the next event)");
        self.due.push((self.ticks + n, item));
    }

    /// Record one event and return the fault scheduled for it, if any.
    pub fn tick(&mut self) -> Option<T> {
        self.ticks += 1;
        let now = self.ticks;
        let mut hit = None;
        let mut i = 0;
        while i < self.due.len() {
            if self.due[i].0 == now {
                let (_, item) = self.due.remove(i);
                hit.get_or_insert(item);
            } else {
                i += 1;
            }
        }
        hit
    }

    /// How many scheduled faults have not fired yet.
    pub fn pending(&self) -> usize {
        self.due.len()
    }
}

/// Lower-case hex, as both Dropbox and our assertions use it.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// A random token of `len` characters from `[A-Za-z0-9]`.
pub fn random_token(len: usize) -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
