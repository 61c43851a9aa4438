//! Runs the virtio-blk fuzz harness (vmm/fuzz/harness.rs) over a deterministic
//! corpus in every test run: well-formed requests, each corrupted in turn, and
//! pseudo-random inputs. `cargo +nightly fuzz run block_request` explores further.

#[path = "../fuzz/harness.rs"]
mod harness;

mod corpus;

/// Writes descriptor `i` of the input's descriptor table.
fn desc(input: &mut [u8], i: usize, addr: u64, len: u32, flags: u16, next: u16) {
    let d = &mut input[i * 16..i * 16 + 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
}

/// A valid three-descriptor request (header, data, status) to mutate.
fn seed(kind: u32, sector: u64, len: u32, write: bool) -> Vec<u8> {
    // Even length: a writable disk (see the harness).
    let mut input = vec![0u8; 256 + 33 + 0x1000 + 1];
    // A FLUSH (len 0) has no data descriptor: the header links to the status.
    desc(&mut input, 0, 0x2000, 16, 1, if len > 0 { 1 } else { 2 });
    desc(&mut input, 1, 0x2100, len, if write { 1 } else { 3 }, 2);
    desc(&mut input, 2, 0x2010, 1, 2, 0);
    input[256] = 1; // one chain available, head 0
    let guest = 256 + 33;
    input[guest..guest + 4].copy_from_slice(&kind.to_le_bytes());
    input[guest + 8..guest + 16].copy_from_slice(&sector.to_le_bytes());
    input
}

#[test]
fn well_formed_requests_and_every_single_byte_corruption() {
    let seeds = [seed(0, 0, 512, false), seed(1, 3, 1024, true), seed(4, 0, 0, false), seed(8, 0, 20, false)];
    for base in &seeds {
        let outcome = harness::run(base);
        assert_eq!((outcome.available, outcome.used, outcome.needs_reset), (1, 1, false));
        assert_eq!(outcome.first_status, 0, "a well-formed request succeeds");
        assert!(outcome.heap_bytes > 0, "the harness counts the device's allocations");
        // Corrupt each byte of the descriptor table, ring and header in turn.
        corpus::corrupt_each_byte(base, 0..256 + 33 + 16, harness::run);
    }
}

#[test]
fn pseudo_random_inputs() {
    corpus::pseudo_random_inputs(2000, harness::run);
}

/// Issue 12 at the harness's scale: a DISCARD (then a WRITE_ZEROES) whose 14
/// data segments each hold 896 KiB of ranges. The device answers UNSUPP
/// (one range per request) without holding heap in proportion to them.
#[test]
fn discard_and_write_zeroes_floods_cost_no_heap() {
    for kind in [11u32, 13] {
        let mut input = seed(kind, 0, 16, true);
        // Header (descriptor 0), 14 segments of ranges over the same buffer, status last.
        desc(&mut input, 0, 0x2000, 16, 1, 1);
        for i in 1..15 {
            desc(&mut input, i, 0x10000, 896 << 10, 1, i as u16 + 1);
        }
        desc(&mut input, 15, 0x2010, 1, 2, 0);
        let outcome = harness::run(&input);
        assert_eq!((outcome.available, outcome.used), (1, 1));
        assert_eq!(outcome.first_status, 2, "UNSUPP for type {kind}");
        assert!(outcome.heap_bytes <= harness::MAX_HEAP_BYTES, "{} bytes of heap", outcome.heap_bytes);
    }
}
