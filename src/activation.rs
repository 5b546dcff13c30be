//! systemd socket activation: listening sockets the service manager opened
//! (`systemd/hookgate.socket`) and passed in. While hookgate restarts, the
//! kernel keeps queueing connections on them, so a provider sees a slow
//! answer instead of a refused connection.
//!
//! The protocol is `sd_listen_fds(3)`: `LISTEN_PID` is our pid,
//! `LISTEN_FDS` counts descriptors from 3 on, and `LISTEN_FDNAMES` names
//! them, separated by `:` (`FileDescriptorName=` in the socket unit). A
//! socket named `admin` serves the admin API, one named `ingress` the
//! webhooks; a single socket with any other name (systemd's default is the
//! unit's name) serves the webhooks.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};

/// The first descriptor systemd passes.
const FIRST_FD: RawFd = 3;

/// What a passed socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Ingress,
    Admin,
}

/// The listeners systemd passed, by role.
#[derive(Debug, Default)]
pub struct Passed {
    pub ingress: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

/// Takes the sockets passed to this process, if any. An error names the
/// variable or socket to fix in the socket unit.
pub fn passed() -> Result<Passed, String> {
    let var = |k: &str| std::env::var(k).ok();
    let roles = assign(
        std::process::id(),
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
    )?;
    let mut passed = Passed::default();
    for (fd, role) in roles {
        let listener = take(fd).map_err(|e| {
            format!("socket {fd} from systemd ({role:?}): {e}; ListenStream= must be a TCP address")
        })?;
        match role {
            Role::Ingress => passed.ingress = Some(listener),
            Role::Admin => passed.admin = Some(listener),
        }
    }
    Ok(passed)
}

/// Which descriptor serves what, from the environment's values; empty when
/// nothing was passed to `pid`.
pub fn assign(
    pid: u32,
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    names: Option<&str>,
) -> Result<Vec<(RawFd, Role)>, String> {
    // Sockets passed to another process (our parent) are not ours.
    if listen_pid.and_then(|p| p.trim().parse::<u32>().ok()) != Some(pid) {
        return Ok(Vec::new());
    }
    let count: usize = match listen_fds {
        None => return Ok(Vec::new()),
        Some(n) => n
            .trim()
            .parse()
            .map_err(|_| format!("LISTEN_FDS is {n:?}, not a count of sockets"))?,
    };
    if count > 2 {
        return Err(format!(
            "systemd passed {count} sockets; hookgate takes one for webhooks and at most one more named `admin`"
        ));
    }
    let names: Vec<&str> = match names {
        Some(n) if count > 0 => n.split(':').collect(),
        _ => vec![""; count],
    };
    if names.len() != count {
        return Err(format!(
            "LISTEN_FDNAMES has {} names for {count} sockets",
            names.len()
        ));
    }
    let named = |role: &str| names.iter().filter(|n| **n == role).count();
    let (ingress, admin) = (named("ingress"), named("admin"));
    let others = count - ingress - admin;
    if ingress > 1 || admin > 1 || (others > 0 && ingress + others > 1) {
        return Err(format!(
            "cannot tell the sockets systemd passed apart ({}); set FileDescriptorName=ingress and FileDescriptorName=admin",
            names.join(", ")
        ));
    }
    Ok(names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let role = if *name == "admin" {
                Role::Admin
            } else {
                Role::Ingress
            };
            (FIRST_FD + i as RawFd, role)
        })
        .collect())
}

/// Makes descriptor `fd` a listener: close-on-exec, non-blocking, and
/// checked to be a listening TCP socket.
fn take(fd: RawFd) -> std::io::Result<TcpListener> {
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // SAFETY: plain fcntl/getsockopt calls on a descriptor number; a
    // closed or foreign one makes them fail, which is reported.
    unsafe {
        let flags = check(libc::fcntl(fd, libc::F_GETFD))?;
        check(libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC))?;
        let mut listening: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        check(libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut len,
        ))?;
        if listening == 0 {
            return Err(std::io::Error::other("not a listening socket"));
        }
    }
    // SAFETY: systemd handed this descriptor to us alone; it is owned by
    // the listener from here on.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    // A Unix socket has no IP address: refuse it here rather than at accept.
    listener.local_addr()?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_passed_or_passed_to_another_process() {
        assert_eq!(assign(10, None, None, None).unwrap(), vec![]);
        assert_eq!(assign(10, Some("11"), Some("1"), None).unwrap(), vec![]);
        assert_eq!(assign(10, None, Some("1"), None).unwrap(), vec![]);
        assert_eq!(assign(10, Some("10"), Some("0"), Some("")).unwrap(), vec![]);
    }

    #[test]
    fn one_socket_serves_webhooks_whatever_its_name() {
        for names in [None, Some("hookgate.socket"), Some("ingress")] {
            assert_eq!(
                assign(10, Some("10"), Some("1"), names).unwrap(),
                vec![(3, Role::Ingress)],
                "{names:?}"
            );
        }
        assert_eq!(
            assign(10, Some("10"), Some("1"), Some("admin")).unwrap(),
            vec![(3, Role::Admin)]
        );
    }

    #[test]
    fn two_sockets_go_by_name() {
        assert_eq!(
            assign(10, Some("10"), Some("2"), Some("admin:ingress")).unwrap(),
            vec![(3, Role::Admin), (4, Role::Ingress)]
        );
        assert_eq!(
            assign(10, Some("10"), Some("2"), Some("hookgate.socket:admin")).unwrap(),
            vec![(3, Role::Ingress), (4, Role::Admin)]
        );
    }

    #[test]
    fn ambiguous_or_malformed_passes_are_errors_that_say_what_to_set() {
        for (fds, names, wanted) in [
            ("2", None, "FileDescriptorName=ingress"),
            (
                "2",
                Some("hookgate.socket:hookgate.socket"),
                "FileDescriptorName=",
            ),
            ("2", Some("ingress:ingress"), "FileDescriptorName="),
            ("2", Some("ingress:other"), "FileDescriptorName="),
            ("2", Some("admin"), "1 names for 2 sockets"),
            ("3", None, "passed 3 sockets"),
            ("x", None, "LISTEN_FDS is \"x\""),
        ] {
            let e = assign(10, Some("10"), Some(fds), names).unwrap_err();
            assert!(e.contains(wanted), "{fds} {names:?}: {e}");
        }
    }
}
