//! Where the guest's serial output goes: a file, an in-memory ring the caller
//! reads, standard output, or any mix of them.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::config::ConsoleConfig;

#[derive(Default)]
struct Ring {
    bytes: VecDeque<u8>,
    capacity: usize,
    /// Bytes ever written, so a follower knows how much it missed.
    total: u64,
}

/// A cheap handle on the console ring: clone it and read while the VM runs.
#[derive(Clone, Default)]
pub struct ConsoleRing {
    inner: Arc<(Mutex<Ring>, Condvar)>,
}

impl ConsoleRing {
    fn new(capacity: usize) -> Self {
        let ring = Ring { capacity, ..Default::default() };
        ConsoleRing { inner: Arc::new((Mutex::new(ring), Condvar::new())) }
    }

    fn push(&self, data: &[u8]) {
        let (lock, cond) = &*self.inner;
        let mut ring = lock.lock().unwrap_or_else(|p| p.into_inner());
        ring.total += data.len() as u64;
        let keep = data.len().min(ring.capacity);
        let overflow = (ring.bytes.len() + keep).saturating_sub(ring.capacity);
        ring.bytes.drain(..overflow);
        ring.bytes.extend(&data[data.len() - keep..]);
        cond.notify_all();
    }

    /// What the ring holds now (the last `capacity` bytes of output).
    pub fn contents(&self) -> Vec<u8> {
        let ring = self.inner.0.lock().unwrap_or_else(|p| p.into_inner());
        ring.bytes.iter().copied().collect()
    }

    /// The ring's contents as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.contents()).into_owned()
    }

    /// Waits until the output contains `needle` or `timeout` passes; true if found.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.inner;
        let mut ring = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let (a, b) = ring.bytes.as_slices();
            if String::from_utf8_lossy(&[a, b].concat()).contains(needle) {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
            ring = cond.wait_timeout(ring, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Total bytes the guest ever wrote.
    pub fn total(&self) -> u64 {
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

/// The serial port's writer.
pub struct Console {
    file: Option<File>,
    ring: Option<ConsoleRing>,
    stdout: bool,
}

impl Console {
    pub fn open(config: &ConsoleConfig) -> io::Result<Self> {
        let file = match &config.file {
            Some(path) => Some(std::fs::OpenOptions::new().append(true).create(true).open(path)?),
            None => None,
        };
        Ok(Console::new(config, file))
    }

    /// The console `config` describes, appending to `file` (already opened
    /// from `config.file`).
    pub fn new(config: &ConsoleConfig, file: Option<std::fs::File>) -> Self {
        let ring = (config.ring_bytes > 0).then(|| ConsoleRing::new(config.ring_bytes));
        Console { file, ring, stdout: config.stdout }
    }

    pub fn ring(&self) -> Option<ConsoleRing> {
        self.ring.clone()
    }
}

impl Write for Console {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // A sink that fails (full disk, closed terminal) must not stop the guest.
        if let Some(file) = &mut self.file {
            let _ = file.write_all(data);
        }
        if let Some(ring) = &self.ring {
            ring.push(data);
        }
        if self.stdout {
            let mut out = io::stdout().lock();
            let _ = out.write_all(data).and_then(|_| out.flush());
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_last_bytes() {
        let ring = ConsoleRing::new(4);
        ring.push(b"abc");
        ring.push(b"def");
        assert_eq!(ring.contents(), b"cdef");
        ring.push(b"0123456789");
        assert_eq!(ring.contents(), b"6789");
        assert_eq!(ring.total(), 16);
        assert!(ring.wait_for("789", Duration::from_millis(1)));
        assert!(!ring.wait_for("abc", Duration::from_millis(1)));
    }

    #[test]
    fn console_writes_to_file_and_ring() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let config = ConsoleConfig { file: Some(path.clone()), ring_bytes: 64, stdout: false };
        let mut console = Console::open(&config).unwrap();
        console.write_all(b"hello\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello\n");
        assert_eq!(console.ring().unwrap().text(), "hello\n");
    }
}
