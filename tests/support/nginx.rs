//! A real nginx (Debian's package) in front of the worker, the way a user puts one there:
//! started on a free loopback port with a generated config in a temp prefix, in the foreground,
//! its error log in the temp dir, killed on drop. The default `location` is the plain
//! `proxy_pass` of most guides: nginx then sends `Host: <upstream>` and no forwarding header.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

pub struct Nginx {
    child: Child,
    dir: TempDir,
    addr: SocketAddr,
}

/// Debian's nginx, or `OFFSITE_NGINX`.
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("OFFSITE_NGINX") {
        return p.into();
    }
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!(
        "nginx is missing: the reverse-proxy tests need it (Debian: apt-get install nginx; \
         .ci/run installs it), or set OFFSITE_NGINX"
    );
}

impl Nginx {
    /// nginx relaying everything to `upstream` with a plain `proxy_pass`.
    pub fn plain(upstream: SocketAddr) -> Nginx {
        Self::start(upstream, "")
    }

    /// nginx relaying to `upstream`, with `directives` added to the `location /` block (for
    /// example `proxy_set_header X-Real-IP $remote_addr;`).
    pub fn start(upstream: SocketAddr, directives: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             server {{\n    listen {addr};\n    location / {{\n      \
             proxy_pass http://{upstream};\n      {directives}\n    }}\n  }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let mut child = Command::new(binary())
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        // Ready when it accepts connections; gone if it exited (its error log says why).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                panic!("nginx exited ({status}): {log}");
            }
            if TcpStream::connect(addr).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "nginx never listened on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { child, dir, addr }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What nginx logged so far (for messages when a test fails).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
