//! Test harness: the real server on loopback port 0, sled in a tempdir,
//! secrets in files.

#![allow(dead_code)]

pub mod postgres;
pub mod receiver;
pub mod shim;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use http::{Method, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use hookgate::config::{self, secrets::Resolver, Proof};
use hookgate::queue::{EventRecord, LocalStore};
use hookgate::verify::{Provider, SignInput, Signed};

/// Secrets the test config uses, by file name.
pub const SECRETS: &[(&str, &str)] = &[
    ("github", "It's a Secret to Everybody"),
    ("gitlab", "gl-token-123"),
    ("gitlab_signing", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
    ("jira", "jira-secret"),
    ("figma", "figma-passcode"),
    ("zendesk", "dGhpc19zZWNyZXRfaXNfZm9yX3Rlc3Rpbmdfb25seQ=="),
    ("intercom", "intercom-client-secret"),
    ("standard", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
];

/// The text of Slack's default message for the bundled merged pull
/// request: what the Slack sink sends (`sinks.rs`) and what `hookgate
/// route` shows it would send (`cli.rs`).
pub const SLACK_DEFAULT_PR_TEXT: &str = "*acme/widgets*: lee-marsh merged pull request #218: Add CSV export [FEAT-123] <https://github.com/acme/widgets/pull/218|open>";

/// One source per provider; `{dir}` is the secrets directory.
pub const ALL_SOURCES: &str = r#"
[sources.github]
provider = "github"
secret = { file = "{dir}/github" }

[sources.gitlab]
provider = "gitlab"
secret = { file = "{dir}/gitlab" }

[sources.gitlab-signed]
provider = "gitlab"
secret = { file = "{dir}/gitlab" }
signing_secret = { file = "{dir}/gitlab_signing" }

[sources.jira]
provider = "jira"
secret = { file = "{dir}/jira" }

[sources.figma]
provider = "figma"
secret = { file = "{dir}/figma" }

[sources.zendesk]
provider = "zendesk"
secret = { file = "{dir}/zendesk" }

[sources.intercom]
provider = "intercom"
secret = { file = "{dir}/intercom" }

[sources.standard]
provider = "standard"
secret = { file = "{dir}/standard" }
"#;

pub struct TestGateway {
    reloads: tokio::sync::mpsc::Sender<hookgate::daemon::Reload>,
    server: String,
    sources: String,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub queue: Arc<LocalStore>,
    pub providers: HashMap<String, Arc<dyn Provider>>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), hookgate::daemon::DaemonError>>>,
    pub dir: tempfile::TempDir,
}

/// Writes the secrets into `dir` and returns the config text with `{dir}`
/// filled in.
pub fn with_secrets(dir: &std::path::Path, toml: &str) -> String {
    for (name, value) in SECRETS {
        std::fs::write(dir.join(name), value).unwrap();
    }
    toml.replace("{dir}", &dir.display().to_string())
}

impl TestGateway {
    /// Starts the gateway with `[server]` lines `server` and sources `sources`.
    pub async fn start(server: &str, sources: &str) -> TestGateway {
        Self::start_in(tempfile::tempdir().unwrap(), server, sources).await
    }

    /// Stops, then starts again on the same data with the same config.
    pub async fn restart(mut self) -> TestGateway {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let (server, sources) = (self.server.clone(), self.sources.clone());
        drop(self);
        // sled releases its lock when its threads are gone.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        Self::start_in(dir, &server, &sources).await
    }

    async fn start_in(dir: tempfile::TempDir, server: &str, sources: &str) -> TestGateway {
        let data = dir.path().join("data");
        let text = with_secrets(
            dir.path(),
            &format!(
                "[server]\ndata_dir = \"{}\"\n{server}\n{sources}",
                data.display()
            ),
        );
        let loaded =
            config::parse(&text, &Resolver::default()).unwrap_or_else(|p| panic!("{p:#?}"));
        let config = loaded.config;
        let providers = config
            .sources
            .values()
            .filter_map(|s| match &s.proof {
                Proof::Ready(p) => Some((s.name.clone(), p.clone())),
                Proof::Closed(_) => None,
            })
            .collect();
        let local = Arc::new(hookgate::queue::Local::new(
            hookgate::daemon::open_queue(&config).unwrap(),
        ));
        let queue = local.store().clone();
        let ingress = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (ingress.local_addr().unwrap(), admin.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let (reloads, reloaded) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(hookgate::daemon::serve(
            ingress,
            admin,
            config,
            local,
            shutdown.clone(),
            reloaded,
        ));
        TestGateway {
            reloads,
            server: server.to_owned(),
            sources: sources.to_owned(),
            addr,
            admin: admin_addr,
            queue,
            providers,
            shutdown,
            task: Some(task),
            dir,
        }
    }

    /// Applies a new config (sources and the rest, same `[server]` lines).
    pub async fn reload(&self, sources: &str) {
        let data = self.dir.path().join("data");
        let text = with_secrets(
            self.dir.path(),
            &format!(
                "[server]\ndata_dir = \"{}\"\n{}\n{sources}",
                data.display(),
                self.server
            ),
        );
        let config = config::parse(&text, &Resolver::default())
            .unwrap_or_else(|p| panic!("{p:#?}"))
            .config;
        self.reloads
            .send(hookgate::daemon::Reload::Apply(Box::new(config)))
            .await
            .unwrap();
    }

    /// Waits (up to 5 s) until there are `n` dead letters; returns them.
    pub async fn wait_dead(&self, n: usize) -> Vec<hookgate::queue::DeliveryRecord> {
        for _ in 0..200 {
            let dead = self.queue.dead_letters().unwrap();
            if dead.len() >= n {
                return dead;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        self.queue.dead_letters().unwrap()
    }

    /// Every provider, default server settings.
    pub async fn all() -> TestGateway {
        Self::start("", ALL_SOURCES).await
    }

    pub fn url(&self, source: &str) -> String {
        format!("http://{}/hooks/{source}", self.addr)
    }

    /// A request signed as `source`'s provider signs.
    pub fn sign(&self, source: &str, event: &str, body: &[u8], delivery_id: &str) -> Signed {
        self.sign_at(source, event, body, delivery_id, SystemTime::now())
    }

    pub fn sign_at(
        &self,
        source: &str,
        event: &str,
        body: &[u8],
        delivery_id: &str,
        now: SystemTime,
    ) -> Signed {
        self.providers[source].sign(&SignInput {
            body,
            event,
            delivery_id,
            now,
        })
    }

    pub async fn post(&self, source: &str, signed: &Signed) -> (StatusCode, String) {
        self.request(Method::POST, source, &signed.headers, signed.body.clone())
            .await
    }

    pub async fn request(
        &self,
        method: Method,
        source: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> (StatusCode, String) {
        let (status, _, body) = hookgate::client::request(method, &self.url(source), headers, body)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Every event stored, routed or not.
    pub fn events(&self) -> Vec<EventRecord> {
        self.queue
            .events()
            .unwrap()
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Replaces (or adds) a header in a signed request.
pub fn set_header(signed: &mut Signed, name: &str, value: &str) {
    signed
        .headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    signed.headers.push((name.to_owned(), value.to_owned()));
}

pub fn remove_header(signed: &mut Signed, name: &str) {
    signed
        .headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case(name));
}

pub fn sample(provider: &str, event: &str) -> Vec<u8> {
    hookgate::samples::find(provider, event)
        .unwrap()
        .as_bytes()
        .to_vec()
}

/// The path of the built binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hookgate"))
}

/// A port that was free a moment ago (for the real binary, which binds itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary, serving a config written to a tempdir.
pub struct Daemon {
    pub child: std::process::Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
}

impl Daemon {
    /// Writes `routes.toml` into `dir` (sources `sources`, data under
    /// `dir/data`) and starts `hookgate serve` with `extra` arguments.
    pub async fn start(dir: &std::path::Path, sources: &str, extra: &[&str]) -> Daemon {
        Self::start_env(dir, sources, extra, &[]).await
    }

    /// Like `start`, with extra environment variables.
    pub async fn start_env(
        dir: &std::path::Path,
        sources: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let (config, listen, admin) = Self::write_config(dir, sources);
        Self::spawn(config, listen, admin, extra, env).await
    }

    /// Like `start`, with `socket` passed in as systemd passes a socket
    /// unit's (descriptor 3, `LISTEN_*` variables, name `ingress`).
    /// `server.listen` names another port; it is returned, and must stay
    /// unused.
    pub async fn start_activated(
        dir: &std::path::Path,
        sources: &str,
        socket: std::net::TcpListener,
    ) -> (Daemon, SocketAddr) {
        let (config, configured, admin) = Self::write_config(dir, sources);
        let listen = socket.local_addr().unwrap();
        let d = Self::spawn_with(config, listen, admin, &[], &[], Some(socket)).await;
        (d, configured)
    }

    /// Writes `routes.toml` into `dir`: free ports, data under `dir/data`.
    pub fn write_config(dir: &std::path::Path, sources: &str) -> (PathBuf, SocketAddr, SocketAddr) {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let text = with_secrets(
            dir,
            &format!(
                "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\ndata_dir = \"{}\"\n{sources}",
                dir.join("data").display()
            ),
        );
        let config = dir.join("routes.toml");
        std::fs::write(&config, text).unwrap();
        (config, listen, admin)
    }

    /// Starts the binary again on the same config and data.
    pub async fn restart(self) -> Daemon {
        let (config, listen, admin) = (self.config.clone(), self.listen, self.admin);
        drop(self);
        Self::spawn(config, listen, admin, &[], &[]).await
    }

    async fn spawn(
        config: PathBuf,
        listen: SocketAddr,
        admin: SocketAddr,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        Self::spawn_with(config, listen, admin, extra, env, None).await
    }

    async fn spawn_with(
        config: PathBuf,
        listen: SocketAddr,
        admin: SocketAddr,
        extra: &[&str],
        env: &[(&str, &str)],
        passed: Option<std::net::TcpListener>,
    ) -> Daemon {
        let log = std::fs::File::create(config.with_extension("log")).unwrap();
        let mut command = match &passed {
            None => std::process::Command::new(binary()),
            Some(socket) => {
                use std::os::fd::AsRawFd;
                use std::os::unix::process::CommandExt;
                // LISTEN_PID must be the daemon's pid: a shell sets it to
                // its own and execs the daemon in its place.
                let mut c = std::process::Command::new("sh");
                c.args(["-c", "export LISTEN_PID=$$; exec \"$0\" \"$@\""])
                    .arg(binary())
                    .env("LISTEN_FDS", "1")
                    .env("LISTEN_FDNAMES", "ingress");
                let fd = socket.as_raw_fd();
                // SAFETY: only async-signal-safe calls between fork and exec.
                unsafe {
                    c.pre_exec(move || {
                        let r = if fd == 3 {
                            libc::fcntl(3, libc::F_SETFD, 0)
                        } else {
                            libc::dup2(fd, 3)
                        };
                        if r < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                c
            }
        };
        let child = command
            .envs(env.iter().copied())
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        // The daemon holds the socket now.
        drop(passed);
        let d = Daemon {
            child,
            listen,
            admin,
            config,
        };
        d.wait_ready().await;
        d
    }

    async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.admin);
        for _ in 0..200 {
            if let Ok((StatusCode::OK, _, _)) =
                hookgate::client::request(Method::GET, &url, &[], vec![]).await
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default();
        panic!("hookgate did not become ready:\n{log}");
    }

    /// Sends SIGHUP and waits (up to 5 s) until the log holds `needle`;
    /// returns the log.
    pub async fn reload_until_logged(&self, needle: &str) -> String {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
        let log_path = self.config.with_extension("log");
        let mut log = String::new();
        for _ in 0..100 {
            log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.contains(needle) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        log
    }

    /// Runs the binary's CLI against this daemon's config.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        cli_on(&self.config, args)
    }

    pub fn url(&self, source: &str) -> String {
        format!("http://{}/hooks/{source}", self.listen)
    }

    /// Waits (up to 20 s) until the router has taken every accepted event.
    pub async fn wait_routed(&self) {
        let url = format!("http://{}/api/queue/stats", self.admin);
        let mut last = String::new();
        for _ in 0..400 {
            if let Ok((StatusCode::OK, _, body)) =
                hookgate::client::request(Method::GET, &url, &[], vec![]).await
            {
                let stats: hookgate::queue::Stats = serde_json::from_slice(&body).unwrap();
                if stats.inbox == 0 {
                    return;
                }
                last = format!("{stats:?}");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("events still waiting to be routed: {last}");
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        self.child.wait().unwrap()
    }

    /// SIGKILL: no drain, no flush.
    pub fn kill(mut self) -> Daemon {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The providers of a config text (to sign as the daemon verifies).
pub fn providers_of(dir: &std::path::Path, sources: &str) -> HashMap<String, Arc<dyn Provider>> {
    let text = with_secrets(dir, sources);
    config::parse(&text, &Resolver::default())
        .unwrap()
        .config
        .sources
        .values()
        .filter_map(|s| match &s.proof {
            Proof::Ready(p) => Some((s.name.clone(), p.clone())),
            Proof::Closed(_) => None,
        })
        .collect()
}

/// A GitHub push with delivery id `id`, signed by `github` and posted to
/// `url`: the status it got.
pub async fn post_push(url: &str, github: &Arc<dyn Provider>, id: &str) -> StatusCode {
    try_post_push(url, github, id).await.unwrap()
}

/// The same, when no answer is an outcome to count (an instance killed,
/// a failover): the status, or why none came.
pub async fn try_post_push(
    url: &str,
    github: &Arc<dyn Provider>,
    id: &str,
) -> Result<StatusCode, String> {
    let signed = github.sign(&SignInput {
        body: &sample("github", "push"),
        event: "push",
        delivery_id: id,
        now: SystemTime::now(),
    });
    hookgate::client::request(Method::POST, url, &signed.headers, signed.body)
        .await
        .map(|(status, _, _)| status)
        .map_err(|e| e.to_string())
}

/// A tmpfs of a fixed size, unmounted on drop.
pub struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// `None` when this process may not mount (not root).
    pub fn mount(at: &std::path::Path, mib: u32) -> Option<SmallDisk> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(at.to_owned()))
    }

    pub fn grow(&self, mib: u32) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// `GET http://{admin}{path}` on an admin listener: the status and the body
/// as text.
/// Runs the binary's CLI with `--config config` (a daemon or not).
pub fn cli_on(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

pub async fn admin_get(admin: SocketAddr, path: &str) -> (StatusCode, String) {
    let url = format!("http://{admin}{path}");
    let (status, _, body) = hookgate::client::request(Method::GET, &url, &[], vec![])
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Each delivery id the queue under `dir/data` holds, and how many times.
pub fn stored_ids(dir: &std::path::Path) -> (LocalStore, BTreeMap<String, usize>) {
    let queue = LocalStore::inspect(&dir.join("data")).unwrap();
    let mut stored = BTreeMap::<String, usize>::new();
    for (_, record) in queue.events().unwrap() {
        *stored.entry(record.delivery_id).or_default() += 1;
    }
    (queue, stored)
}

/// Fails naming a few of the acknowledged deliveries the queue lacks.
pub fn assert_none_lost(acked: &[String], stored: &BTreeMap<String, usize>) {
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged deliveries lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}
