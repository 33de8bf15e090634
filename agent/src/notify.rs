//! systemd's service notifications (`sd_notify`), without libsystemd: datagrams to the socket
//! `$NOTIFY_SOCKET` names (a path, or `@name` in the abstract namespace). `READY=1` once the
//! state is open and Port answered, `WATCHDOG=1` every half `$WATCHDOG_USEC` while the runtime
//! is alive, `STOPPING=1` on the way out. Without `$NOTIFY_SOCKET` (not under systemd) nothing
//! is sent.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Where notifications go, if anywhere.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; a socket that cannot be made is logged and notifications skipped.
    pub fn from_env() -> Self {
        let Some(address) = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|a| !a.is_empty())
        else {
            return Self { socket: None };
        };
        match UnixDatagram::unbound() {
            Ok(socket) => Self {
                socket: Some((socket, address)),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot make a socket for systemd's notifications");
                Self { socket: None }
            }
        }
    }

    /// Sends `state` (`READY=1`, ...). Failures are logged once per call, never fatal.
    pub fn notify(&self, state: &str) {
        let Some((socket, address)) = &self.socket else {
            return;
        };
        let sent = match address.strip_prefix('@') {
            Some(name) => send_abstract(socket, name, state),
            None => socket.send_to(state.as_bytes(), address).map(|_| ()),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }

    /// Pings `WATCHDOG=1` every half of `$WATCHDOG_USEC` until `stop`, when systemd asks for
    /// it (`WatchdogSec=`). The pings come from the async runtime: a runtime that stops making
    /// progress stops them, and systemd restarts the agent.
    pub async fn watchdog(&self, stop: CancellationToken) {
        let Some(every) = watchdog_interval() else {
            return;
        };
        loop {
            self.notify("WATCHDOG=1");
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// Half of `$WATCHDOG_USEC`, when it is set for this process (`$WATCHDOG_PID` absent or ours).
fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim() != std::process::id().to_string()
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, name: &str, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    socket.send_to_addr(state.as_bytes(), &address).map(|_| ())
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &str, _: &str) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets are Linux's",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            socket: Some((UnixDatagram::unbound().unwrap(), path.display().to_string())),
        };
        notifier.notify("READY=1");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        // Not under systemd: nothing to do, nothing fails.
        Notifier { socket: None }.notify("READY=1");
    }
}
