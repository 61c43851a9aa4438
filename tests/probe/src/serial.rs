//! COM1 output: a 16550 with its FIFO on, polled for "transmit holding
//! register empty" before each 16 bytes.

use core::fmt;

use crate::hw::{inb, outb};

const COM1: u16 = 0x3f8;
const LSR_THRE: u8 = 1 << 5;

pub fn init() {
    outb(COM1 + 1, 0x00); // no interrupts
    outb(COM1 + 3, 0x80); // DLAB
    outb(COM1, 0x01); // 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8N1
    outb(COM1 + 2, 0xc7); // FIFO on, cleared
    outb(COM1 + 4, 0x03); // DTR, RTS
}

/// The transmit FIFO's depth: once THRE says it is empty, this many bytes
/// may go in without asking again (the FIFO is on, see `init`).
const TX_FIFO: u8 = 16;

/// Bytes the FIFO can still take without another look at THRE: one LSR read
/// per 16 bytes rather than per byte, as a 16550 driver does (each port
/// access is a VM exit).
static mut TX_ROOM: u8 = 0;

fn put(byte: u8) {
    // SAFETY: one vCPU writes the console.
    unsafe {
        if TX_ROOM == 0 {
            // Bounded: a UART that never drains must not hang the probe.
            for _ in 0..100_000 {
                if inb(COM1 + 5) & LSR_THRE != 0 {
                    break;
                }
            }
            TX_ROOM = TX_FIFO;
        }
        TX_ROOM -= 1;
    }
    outb(COM1, byte);
}

/// Raw bytes, with "\n" sent as "\r\n" like every other line.
pub fn write_bytes(bytes: &[u8]) {
    for &byte in bytes {
        if byte == b'\n' {
            put(b'\r');
        }
        put(byte);
    }
}

pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

/// `report!("key={}", v)` prints one `probe: ` line.
#[macro_export]
macro_rules! report {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = write!($crate::serial::Serial, "probe: ");
        let _ = writeln!($crate::serial::Serial, $($arg)*);
    }};
}
