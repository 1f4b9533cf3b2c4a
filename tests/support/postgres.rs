//! A real PostgreSQL 15 cluster for one test: `initdb` in a temp dir, a free port, the Unix
//! socket in the temp dir, password (SCRAM) authentication for the `postgres` user. As root
//! (CI) the server runs as the `postgres` system user, since initdb refuses root. Stopped
//! (immediate shutdown) when dropped.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Where the tests take PostgreSQL 15 from (Debian's postgresql-15).
pub const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct Postgres {
    dir: tempfile::TempDir,
    pub port: u16,
    pub password: String,
    server: Child,
}

/// The uid and gid of `user`, from /etc/passwd.
fn ids_of(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let run_as = is_root().then(|| {
            ids_of("postgres").expect("a postgres system user (apt-get install postgresql-15)")
        });
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let password = "pg-test-password-7c1f".to_string();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, &password).unwrap();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let as_pg = |cmd: &mut Command| {
            if let Some((uid, gid)) = run_as {
                use std::os::unix::process::CommandExt;
                cmd.uid(uid).gid(gid);
            }
        };
        let mut initdb = Command::new(format!("{BIN}/initdb"));
        initdb
            .args([
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "--no-locale",
                "-E",
                "UTF8",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("-D")
            .arg(&data)
            .stdout(Stdio::null());
        as_pg(&mut initdb);
        let out = initdb
            .output()
            .expect("run initdb (apt-get install postgresql-15)");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Command::new(format!("{BIN}/postgres"));
        server
            .arg("-D")
            .arg(&data)
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ])
            .arg("-k")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_pg(&mut server);
        let server = server.spawn().expect("start postgres");
        let pg = Postgres {
            dir,
            port,
            password,
            server,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(format!("{BIN}/pg_isready"))
                .arg("-h")
                .arg(pg.socket_dir())
                .args(["-p", &port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "postgres did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        pg
    }

    /// The directory of the server's Unix socket (its "host").
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// psql with the connection set (never the password on the command line).
    pub fn psql_cmd(&self, database: &str) -> Command {
        let mut c = Command::new(format!("{BIN}/psql"));
        c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-h"])
            .arg(self.socket_dir())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .env("PGPASSWORD", &self.password)
            .env_remove("PGPASSFILE");
        c
    }

    /// Runs `sql` and returns what psql printed (unaligned, tuples only).
    pub fn sql(&self, database: &str, sql: &str) -> String {
        let out = self.psql_cmd(database).arg("-c").arg(sql).output().unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs the SQL file `file` into `database`.
    pub fn restore(&self, database: &str, file: &Path) {
        let out = self
            .psql_cmd(database)
            .arg("-f")
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "restore {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The `[databases.<name>]` keys that connect to `database` here.
    pub fn connection_toml(&self, database: &str) -> String {
        format!(
            "host = \"{}\"\nport = {}\ndatabase = \"{database}\"\nuser = \"postgres\"\npassword = \"{}\"\n",
            self.socket_dir().display(),
            self.port,
            self.password
        )
    }

    pub fn bin() -> PathBuf {
        PathBuf::from(BIN)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown; the cluster is thrown away with the temp dir.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.server.id().to_string()])
            .status();
        let _ = self.server.wait();
    }
}
