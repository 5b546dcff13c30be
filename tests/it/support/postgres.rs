//! Throwaway PostgreSQL clusters: `initdb` in a tempdir, started on a
//! free loopback port (fsync on), stopped and removed at the end. One
//! cluster is shared by the test binary ([`Cluster::shared`], a fresh
//! database per test); a test that stops or breaks its server starts its
//! own ([`Cluster::start`]).
//!
//! PostgreSQL runs as the `postgres` system user when the tests run as
//! root (it refuses to run as root). When PostgreSQL is not installed a
//! test is skipped, with a message, unless `HOOKGATE_REQUIRE_POSTGRES=1`
//! (CI), where that fails it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// A running (or stopped) cluster, removed when dropped.
pub struct Cluster {
    bindir: PathBuf,
    /// The tempdir: `data/` (the cluster), the socket and the log.
    root: PathBuf,
    port: u16,
    /// Run PostgreSQL's tools as the `postgres` user (the tests run as root).
    as_postgres: bool,
    /// Server options added by the test (`-c ssl=on` …), for every start.
    options: Mutex<Vec<String>>,
    /// The tempdir, removed on drop.
    _dir: tempfile::TempDir,
}

/// The shared cluster, stopped at exit (statics are never dropped).
static SHARED: OnceLock<Option<Mutex<Option<Cluster>>>> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// Where PostgreSQL's programs are: `pg_config --bindir`, else the
/// highest `/usr/lib/postgresql/*/bin`.
pub fn bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").is_file() {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// `None` (and a message) when PostgreSQL is missing and not required.
fn available() -> Option<PathBuf> {
    match bindir() {
        Some(dir) => Some(dir),
        None if std::env::var("HOOKGATE_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
            panic!("PostgreSQL is not installed and HOOKGATE_REQUIRE_POSTGRES=1")
        }
        None => {
            eprintln!("skipped: PostgreSQL not installed (apt install postgresql)");
            None
        }
    }
}

impl Cluster {
    /// A cluster of its own, started; `None` when PostgreSQL is missing
    /// (the test returns: it is skipped).
    pub fn start() -> Option<Cluster> {
        let cluster = Cluster::init()?;
        cluster.start_server();
        Some(cluster)
    }

    /// A cluster made (`initdb`) but not started: the test may write
    /// files into [`Cluster::data_dir`] and add options first.
    pub fn init() -> Option<Cluster> {
        let cluster = Cluster::empty()?;
        cluster.run(
            "initdb",
            &[
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-instructions",
                "-D",
            ],
            &[cluster.data_dir().as_os_str()],
        );
        Some(cluster)
    }

    /// A streaming standby of `primary` (running), made with
    /// `pg_basebackup -R` and started on its own port. It does not
    /// inherit `primary`'s server options (those given with
    /// [`Cluster::add_option`]); it does inherit its `postgresql.conf` and
    /// `postgresql.auto.conf`, so `synchronous_standby_names` is to be set
    /// on the primary only after this.
    pub fn standby_of(primary: &Cluster) -> Cluster {
        let standby = Cluster::empty().expect("PostgreSQL is installed: the primary runs");
        let port = primary.port.to_string();
        standby.run(
            "pg_basebackup",
            &[
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
            ],
            &[standby.data_dir().as_os_str()],
        );
        standby.start_server();
        standby
    }

    /// Promotes this standby to a primary (`pg_ctl promote -w`).
    pub fn promote(&self) {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-w", "-t", "60", "promote", "-D"],
            &[data.as_os_str()],
        );
    }

    /// The tempdir and a free port; no cluster in it yet.
    fn empty() -> Option<Cluster> {
        let bindir = available()?;
        let dir = tempfile::Builder::new()
            .prefix("hookgate-pg")
            .tempdir()
            .expect("tempdir");
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let cluster = Cluster {
            bindir,
            root: dir.path().to_owned(),
            port: super::free_port(),
            as_postgres,
            options: Mutex::new(Vec::new()),
            _dir: dir,
        };
        if as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.root)
                .status()
                .expect("chown");
            assert!(ok.success(), "chown the cluster's directory to postgres");
        }
        Some(cluster)
    }

    /// Adds a server option (`-c name=value`) to every later start.
    pub fn add_option(&self, option: &str) {
        self.options.lock().unwrap().push(option.to_owned());
    }

    /// Writes `contents` to `name` in the data directory, owned by the
    /// server's user and readable by it only (as keys must be).
    pub fn write_file(&self, name: &str, contents: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data_dir().join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if self.as_postgres {
            let ok = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&path)
                .status()
                .unwrap();
            assert!(ok.success());
        }
    }

    /// The cluster every test in this binary shares; `None` when
    /// PostgreSQL is missing.
    pub fn shared() -> Option<&'static Mutex<Option<Cluster>>> {
        SHARED
            .get_or_init(|| {
                let c = Cluster::start()?;
                extern "C" fn stop_shared() {
                    if let Some(Some(m)) = SHARED.get() {
                        if let Ok(mut c) = m.lock() {
                            drop(c.take());
                        }
                    }
                }
                unsafe { libc::atexit(stop_shared) };
                Some(Mutex::new(Some(c)))
            })
            .as_ref()
    }

    /// A fresh, empty database on the shared cluster: its name and URL.
    pub fn fresh_database() -> Option<(String, String)> {
        let shared = Self::shared()?.lock().expect("cluster lock");
        let c = shared.as_ref().expect("the shared cluster runs");
        let name = c.create_database();
        let url = c.url(&name);
        Some((name, url))
    }

    /// Runs `sql` in database `db` of the shared cluster.
    pub fn shared_psql(db: &str, sql: &str) -> String {
        let shared = Self::shared()
            .expect("PostgreSQL installed")
            .lock()
            .expect("cluster lock");
        shared
            .as_ref()
            .expect("the shared cluster runs")
            .psql(db, sql)
    }

    /// Makes a database of a fresh name; its name.
    pub fn create_database(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        name
    }

    /// A key=value URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db} sslmode=disable connect_timeout=5",
            self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Runs `sql` in `db` with psql; its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let port = self.port.to_string();
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
                "-U",
                "postgres",
                "-p",
                &port,
                "-d",
                db,
                "-c",
                sql,
            ],
            &[],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Stops the server: `mode` is pg_ctl's (`fast`, `immediate`, `smart`).
    pub fn stop(&self, mode: &str) {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-w", "-m", mode, "stop", "-D"],
            &[data.as_os_str()],
        );
    }

    /// Starts the server again (on the same port).
    pub fn start_server(&self) {
        let data = self.data_dir();
        let log = self.root.join("postgres.log");
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -c unix_socket_directories={} -p {} -c max_connections=200",
            self.root.display(),
            self.port
        );
        for o in self.options.lock().unwrap().iter() {
            options.push(' ');
            options.push_str(o);
        }
        self.run(
            "pg_ctl",
            &["-w", "-t", "60", "-o", &options, "-l"],
            &[
                log.as_os_str(),
                "-D".as_ref(),
                data.as_os_str(),
                "start".as_ref(),
            ],
        );
    }

    /// Runs one of PostgreSQL's programs (as `postgres` when root);
    /// panics with its output when it fails.
    fn run(&self, program: &str, args: &[&str], more: &[&std::ffi::OsStr]) -> Output {
        let path = self.bindir.join(program);
        let mut cmd = match self.as_postgres {
            true => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&path);
                c
            }
            false => Command::new(&path),
        };
        cmd.args(args).args(more).current_dir(&self.root);
        let out = cmd.output().unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let path = self.bindir.join("pg_ctl");
        let mut cmd = match self.as_postgres {
            true => {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&path);
                c
            }
            false => Command::new(&path),
        };
        // Already stopped by the test: pg_ctl says so, and that is fine.
        let _ = cmd
            .args(["-w", "-m", "immediate", "stop", "-D"])
            .arg(&data)
            .output();
    }
}

/// The environment variable the configs below read the database URL from.
pub const URL_ENV: &str = "HOOKGATE_TEST_DATABASE_URL";

/// GitHub pushes to one http sink (extra sink keys in `sink`), on the
/// PostgreSQL backend whose URL is in [`URL_ENV`].
pub fn pushes_to(sink_url: &str, sink: &str) -> String {
    format!(
        r#"
[queue]
backend = "postgres"
url = {{ env = "{URL_ENV}" }}
pool_size = 4

[sources.github]
provider = "github"
secret = {{ file = "{{dir}}/github" }}

[sinks.capture]
kind = "http"
url = "{sink_url}"
{sink}

[[routes]]
name = "pushes"
source = "github"
event = "push"
to = ["capture"]
"#
    )
}

/// The real binary on `text`, its database at `url`.
pub async fn instance(dir: &std::path::Path, text: &str, url: &str) -> super::Daemon {
    super::Daemon::start_env(dir, text, &[], &[(URL_ENV, url)]).await
}
