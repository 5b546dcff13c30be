//! systemd's notify protocol (`Type=notify`): `READY=1` once the listeners
//! are bound and the queue is open, `STOPPING=1` when the drain starts, and
//! `WATCHDOG=1` while the router and dispatcher loops keep turning, so a
//! hung daemon is restarted. Without `$NOTIFY_SOCKET` (not under systemd)
//! every call does nothing.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;

/// Sends `state` to the service manager, if there is one.
pub fn notify(state: &str) {
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(e) = notify_to(&socket, state) {
            tracing::warn!(error = %e, state, "cannot notify systemd");
        }
    }
}

/// When a loop last went round.
#[derive(Debug)]
pub struct Heartbeat(std::sync::atomic::AtomicU64, std::time::Instant);

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat(
            std::sync::atomic::AtomicU64::new(0),
            std::time::Instant::now(),
        )
    }
}

impl Heartbeat {
    pub fn beat(&self) {
        self.0.store(
            self.1.elapsed().as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Time since the last beat.
    pub fn age(&self) -> std::time::Duration {
        let last =
            std::time::Duration::from_millis(self.0.load(std::sync::atomic::Ordering::Relaxed));
        self.1.elapsed().saturating_sub(last)
    }
}

/// systemd's watchdog interval for this process, if it set one.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| std::time::Duration::from_micros(usec))
}

/// Pings the watchdog at half its interval while every heartbeat is
/// younger than the interval; a stuck loop stops the pings, and systemd
/// restarts the daemon. Returns when `stop` is cancelled.
pub async fn watchdog(
    interval: std::time::Duration,
    beats: Vec<std::sync::Arc<Heartbeat>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        match beats.iter().map(|b| b.age()).max() {
            Some(age) if age > interval => {
                tracing::error!(stalled_for = ?age, "a loop has stopped turning: no watchdog ping, systemd will restart hookgate");
            }
            _ => notify("WATCHDOG=1"),
        }
    }
}

/// Sends `state` to the datagram socket `socket` (a path, or `@name` for
/// Linux's abstract namespace).
pub fn notify_to(socket: &OsStr, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = socket.as_bytes();
    match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            sock.send_to(state.as_bytes(), socket)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_the_state_to_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn heartbeat_ages() {
        let h = Heartbeat::default();
        h.beat();
        assert!(h.age() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn abstract_sockets_work_too() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("hookgate-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let mut buf = [0; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
