//! What both fuzz-corpus tests do to their harness: every byte of a valid
//! input corrupted in turn, and a deterministic stream of random inputs.

/// Runs `harness` on `base` with each byte in `range` (every third) flipped,
/// then set to 0xff: no corruption may panic or break the harness's bounds.
pub fn corrupt_each_byte<T>(base: &[u8], range: std::ops::Range<usize>, harness: impl Fn(&[u8]) -> T) {
    for at in range.step_by(3) {
        let mut input = base.to_vec();
        input[at] ^= 0xa5;
        let _ = harness(&input);
        input[at] = 0xff;
        let _ = harness(&input);
    }
}

/// Runs `harness` on `rounds` inputs of 16 to 1515 bytes from a xorshift
/// stream (the same inputs every run).
pub fn pseudo_random_inputs<T>(rounds: usize, harness: impl Fn(&[u8]) -> T) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..rounds {
        let len = 16 + (round * 37) % 1500;
        let input: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let _ = harness(&input);
    }
}
