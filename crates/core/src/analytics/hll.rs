//! A HyperLogLog distinct counter with 2^14 one-byte registers (16 KB), for the SQLite and
//! memory backends' all-time distinct users (Redis counts those with its own
//! `PFADD`/`PFCOUNT`) and for every backend's rollup buckets (their registers, merged across
//! buckets and partitions, see [`super::rollup`]).
//!
//! The hash must stay the same across builds: registers written to a SQLite file by one
//! release are read and extended by the next. So it is FNV-1a (64 bit) followed by the
//! MurmurHash3 finaliser (FNV alone mixes its last bytes poorly), both fixed by definition,
//! never `std`'s `DefaultHasher`. Standard error: 1.04 / sqrt(2^14) ≈ 0.81%; small counts use
//! linear counting, which is near exact.

/// Bits of the hash that pick the register.
pub const PRECISION: u32 = 14;
/// Number of registers.
pub const REGISTERS: usize = 1 << PRECISION;

/// The stable 64-bit hash of an item.
pub fn hash(item: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in item.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The register an item falls in and the rank it offers there (1 + leading zeros of the rest
/// of its hash; at most `64 - PRECISION + 1`).
pub fn position(item: &str) -> (usize, u8) {
    let h = hash(item);
    let register = (h >> (64 - PRECISION)) as usize;
    // A guard bit below the used bits bounds the rank when the rest is all zeros.
    let rest = (h << PRECISION) | (1 << (PRECISION - 1));
    (register, rest.leading_zeros() as u8 + 1)
}

/// The registers of one distinct count.
#[derive(Clone, PartialEq, Eq)]
pub struct Hll {
    /// Highest rank seen per register; 0 = nothing fell there yet.
    registers: Box<[u8]>,
}

impl std::fmt::Debug for Hll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hll")
            .field("estimate", &self.estimate())
            .finish()
    }
}

impl Default for Hll {
    fn default() -> Self {
        Hll::new()
    }
}

impl Hll {
    pub fn new() -> Self {
        Hll {
            registers: vec![0; REGISTERS].into_boxed_slice(),
        }
    }

    /// Counts `item` (again: adding an item twice changes nothing).
    pub fn insert(&mut self, item: &str) {
        let (register, rank) = position(item);
        self.raise(register, rank);
    }

    /// Raises one register to `rank` if it is lower; out-of-range registers are ignored (a
    /// damaged store cannot make this panic).
    pub fn raise(&mut self, register: usize, rank: u8) {
        if let Some(r) = self.registers.get_mut(register) {
            *r = (*r).max(rank);
        }
    }

    /// `(register, rank)` of every register that holds something, as stores keep them.
    pub fn registers(&self) -> impl Iterator<Item = (usize, u8)> + '_ {
        self.registers
            .iter()
            .enumerate()
            .filter(|(_, &r)| r > 0)
            .map(|(i, &r)| (i, r))
    }

    /// The estimated number of distinct items inserted.
    pub fn estimate(&self) -> u64 {
        let m = REGISTERS as f64;
        let mut sum = 0.0;
        let mut zeros = 0usize;
        for &r in self.registers.iter() {
            sum += 2f64.powi(-i32::from(r));
            zeros += usize::from(r == 0);
        }
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            // Linear counting: precise while many registers are still empty.
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        estimate.round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a 64 of "user_1", then the MurmurHash3 finaliser (checked by hand).
    const PINNED: u64 = 0xac0b_711a_1246_cb5b;

    #[test]
    fn the_hash_is_fixed_across_builds() {
        // Registers stored by one release are extended by the next: this must never change.
        assert_eq!(hash("user_1"), PINNED);
        assert_ne!(hash("user_1"), hash("user_2"));
    }

    #[test]
    fn small_counts_are_near_exact_and_repeats_count_once() {
        let mut h = Hll::new();
        for round in 0..3 {
            for i in 0..1_000 {
                h.insert(&format!("user_{i}"));
            }
            let e = h.estimate() as f64;
            assert!((e - 1_000.0).abs() <= 10.0, "round {round}: {e}");
        }
    }

    #[test]
    fn five_thousand_users_within_three_percent() {
        let mut h = Hll::new();
        for i in 0..5_000 {
            h.insert(&format!("u{i}"));
        }
        let e = h.estimate() as f64;
        assert!((e - 5_000.0).abs() / 5_000.0 < 0.03, "{e}");
    }

    /// Feeds 1,000,000 distinct ids, five times with different ids, and prints the errors
    /// (quoted in the README):
    /// `cargo test -p pipeline-core --lib hll -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement: run explicitly"]
    fn one_million_distinct_users_error() {
        let n = 1_000_000u64;
        let mut squares = 0.0;
        for trial in 0..5 {
            let mut h = Hll::new();
            for i in 0..n {
                h.insert(&format!("user_{trial}_{i:07}"));
            }
            let e = h.estimate();
            let error = (e as f64 - n as f64) / n as f64 * 100.0;
            squares += error * error;
            println!("1,000,000 distinct ids, trial {trial}: estimate {e}, error {error:+.3}%");
            assert!(error.abs() < 3.0);
        }
        println!(
            "root mean square error {:.3}%, registers {} bytes",
            (squares / 5.0).sqrt(),
            REGISTERS
        );
    }
}
