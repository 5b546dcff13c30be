//! Throwaway PostgreSQL clusters for the tests: `initdb` in a temp dir, a
//! free loopback port, stopped (`-m immediate`) and removed on drop. Run
//! as the `postgres` system user when the tests run as root (PostgreSQL
//! refuses root). Missing binaries skip the test with a message, unless
//! `HOOKGATE_REQUIRE_POSTGRES=1` (CI), where they fail it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// A running cluster of our own.
pub struct Cluster {
    pub bindir: PathBuf,
    pub port: u16,
    /// Holds `data/` (the cluster) and the unix socket.
    pub dir: tempfile::TempDir,
    /// Run the binaries as `postgres` (we are root).
    as_postgres: bool,
}

/// The server binaries, if PostgreSQL is installed.
pub fn bindir() -> Option<PathBuf> {
    let from_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file());
    if from_config.is_some() {
        return from_config;
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// Whether PostgreSQL tests must run (CI) rather than skip.
fn required() -> bool {
    std::env::var("HOOKGATE_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// The binaries, or `None` after saying the test is skipped.
pub fn available() -> Option<PathBuf> {
    match bindir() {
        Some(b) => Some(b),
        None if required() => {
            panic!("PostgreSQL is required here (HOOKGATE_REQUIRE_POSTGRES=1) but not installed: apt install postgresql")
        }
        None => {
            eprintln!("skipped: PostgreSQL not installed (apt install postgresql)");
            None
        }
    }
}

impl Cluster {
    /// Creates and starts a cluster (`synchronous_commit` and `fsync` as
    /// the server defaults them: on), with `extra` lines in its
    /// `postgresql.conf`.
    pub fn start(bindir: &Path, extra: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let cluster = Cluster {
            bindir: bindir.to_owned(),
            port: super::free_port(),
            dir,
            as_postgres,
        };
        if as_postgres {
            cluster.chown(cluster.dir.path());
        }
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nmax_connections = 200\nlog_min_messages = warning\n{extra}\n",
            cluster.port,
            cluster.dir.path().display()
        );
        let mut text = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        text.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), text).unwrap();
        cluster.pg_ctl(&["start", "-w", "-t", "60"]);
        cluster
    }

    /// The cluster's data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A URL for `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/{database}?connect_timeout=5",
            self.port
        )
    }

    /// Runs SQL with psql as `postgres`; panics with its output on failure.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = self.run(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A fresh, empty database; its URL.
    pub fn database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// `pg_ctl ARGS -D data`.
    pub fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.data();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-D", data.to_str().unwrap(), "-l"]);
        let log = self.dir.path().join("server.log");
        all.push(log.to_str().unwrap());
        self.run("pg_ctl", &all)
    }

    /// Stops the server (`smart`, `fast` or `immediate`).
    pub fn stop(&self, mode: &str) {
        self.pg_ctl(&["stop", "-w", "-m", mode]);
    }

    /// Starts it again after `stop`.
    pub fn restart(&self) {
        self.pg_ctl(&["start", "-w", "-t", "60"]);
    }

    /// Runs a server binary (as `postgres` when we are root).
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bindir.join(program);
        let path = if path.is_file() {
            path
        } else {
            PathBuf::from(program)
        };
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
        if !out.status.success() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            panic!(
                "{program} {args:?} failed: {}\n{}\n{}\nserver log:\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    fn chown(&self, path: &Path) {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot give {} to the postgres user", path.display());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let pg_ctl = self.bindir.join("pg_ctl");
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            c
        } else {
            Command::new(&pg_ctl)
        };
        let _ = command
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&data)
            .output();
    }
}

static SHARED: OnceLock<Option<Cluster>> = OnceLock::new();

/// One cluster for the whole test binary, stopped and removed when the
/// binary exits (statics are never dropped: an `atexit` handler does it).
fn shared() -> Option<&'static Cluster> {
    SHARED
        .get_or_init(|| {
            let cluster = available().map(|bin| Cluster::start(&bin, ""))?;
            extern "C" fn stop_shared() {
                if let Some(Some(c)) = SHARED.get() {
                    let mut command = Command::new(c.bindir.join("pg_ctl"));
                    if c.as_postgres {
                        command = Command::new("runuser");
                        command
                            .args(["-u", "postgres", "--"])
                            .arg(c.bindir.join("pg_ctl"));
                    }
                    let _ = command
                        .args(["stop", "-m", "immediate", "-D"])
                        .arg(c.data())
                        .output();
                    let _ = std::fs::remove_dir_all(c.dir.path());
                }
            }
            // SAFETY: registers a plain function to run at exit.
            unsafe { libc::atexit(stop_shared) };
            Some(cluster)
        })
        .as_ref()
}

/// A fresh database on the shared cluster, or `None` (skipped) when
/// PostgreSQL is not installed.
pub async fn database() -> Option<String> {
    tokio::task::spawn_blocking(|| shared().map(Cluster::database))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_throwaway_cluster_starts_with_synchronous_commit_on() {
    let url = database().await.unwrap();
    let c = shared().unwrap();
    let name = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    assert_eq!(c.psql(name, "SELECT 1 + 1"), "2");
    assert_eq!(c.psql(name, "SHOW synchronous_commit"), "on");
}
