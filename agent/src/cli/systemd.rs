//! sd_notify for `Type=notify` units: readiness and the watchdog. A no-op
//! when systemd did not start us (no NOTIFY_SOCKET).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let path = path.to_string_lossy().into_owned();
    let address = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = address.and_then(|address| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &address));
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "sd_notify failed");
    }
}

pub fn notify_ready() {
    notify("READY=1");
}

/// Feeds the watchdog at half the interval systemd asked for (WATCHDOG_USEC).
pub async fn watchdog() {
    let Some(usec) = std::env::var("WATCHDOG_USEC").ok().and_then(|v| v.parse::<u64>().ok()) else { return };
    let period = Duration::from_micros(usec / 2).max(Duration::from_millis(100));
    loop {
        notify("WATCHDOG=1");
        tokio::time::sleep(period).await;
    }
}
