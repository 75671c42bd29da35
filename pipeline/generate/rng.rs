//! The generator's own pseudo-random numbers: SplitMix64 streams and a keyed permutation.
//!
//! Owns every random draw `tre generate` makes, so that the same seed gives the same
//! bytes on every machine and with every version of every dependency: no external RNG
//! crate, and no transcendental float functions (`ln`, `exp`), whose last bit may differ
//! between C libraries. Only integer arithmetic and exact IEEE operations (`*`, `+`, `/`,
//! `round`) appear here. This is not a cryptographic generator and must never be used for
//! keys or pseudonyms.

/// The SplitMix64 output function (Steele, Lea and Flood 2014): a strong 64-bit mixer.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A stable 64-bit hash of a name (FNV-1a then mixed), used to give each table its own
/// stream without depending on the table's position.
pub(crate) fn name_hash(name: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix(h)
}

/// A SplitMix64 stream.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A stream identified by (seed, stream, sub-stream); different triples give
    /// independent-looking streams.
    pub(crate) fn new(seed: u64, stream: u64, sub: u64) -> Self {
        let s = mix(seed ^ 0x5EED_F7E5_u64);
        let s = mix(s ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Rng(mix(s ^ sub.rotate_left(17)))
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below 2^-40 for the n used here).
    /// Returns 0 when `n` is 0.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform index into a slice of length `n`.
    pub(crate) fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Uniform in `[0, 1)` with 53 bits.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform integer in `lo..=hi` (returns `lo` when `hi < lo`).
    pub(crate) fn range_i32(&mut self, lo: i32, hi: i32) -> i32 {
        if hi <= lo {
            return lo;
        }
        let span = (i64::from(hi) - i64::from(lo) + 1) as u64;
        (i64::from(lo) + self.below(span) as i64) as i32
    }

    /// A right-skewed count with the given mean: `floor(mean * X + U)` where `X` is eight
    /// times a product of three uniforms (mean 1, range 0..8) and `U` is uniform, so the
    /// mean is exact and most patients sit below it while a few have many times more.
    pub(crate) fn skewed_count(&mut self, mean: f64) -> u64 {
        if mean <= 0.0 {
            return 0;
        }
        let x = 8.0 * self.unit() * self.unit() * self.unit();
        (mean * x + self.unit()).floor() as u64
    }

    /// A triangular draw in `[lo, hi]` peaking in the middle.
    pub(crate) fn triangular(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.unit() + self.unit()) * 0.5
    }

    /// An index drawn from cumulative weights (`cumulative` ascending, last = total).
    pub(crate) fn weighted(&mut self, cumulative: &[u64]) -> usize {
        let total = cumulative.last().copied().unwrap_or(0);
        let r = self.below(total);
        cumulative.partition_point(|&c| c <= r)
    }
}

/// A keyed bijection of `0..n`: a balanced four-round Feistel network over the smallest
/// even power of two covering `n`, with cycle walking back into range.
#[derive(Debug, Clone)]
pub(crate) struct Permutation {
    n: u64,
    half_bits: u32,
    mask: u64,
    keys: [u64; 4],
}

impl Permutation {
    /// A permutation of `0..n` keyed by `seed`.
    pub(crate) fn new(n: u64, seed: u64) -> Self {
        let bits = 64 - n.saturating_sub(1).leading_zeros();
        let half_bits = bits.div_ceil(2).max(1);
        let mut rng = Rng::new(seed, 0x0FE1_57E1, 0);
        let keys = [
            rng.next_u64(),
            rng.next_u64(),
            rng.next_u64(),
            rng.next_u64(),
        ];
        Permutation {
            n,
            half_bits,
            mask: (1u64 << half_bits) - 1,
            keys,
        }
    }

    fn round_trip(&self, x: u64) -> u64 {
        let (mut l, mut r) = (x >> self.half_bits, x & self.mask);
        for k in self.keys {
            let f = mix(r ^ k) & self.mask;
            (l, r) = (r, l ^ f);
        }
        (l << self.half_bits) | r
    }

    /// The image of `i` (`i` must be below `n`; larger values are reduced first).
    pub(crate) fn apply(&self, i: u64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let mut x = i % self.n;
        loop {
            x = self.round_trip(x);
            if x < self.n {
                return x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::new(1, 2, 3).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::new(1, 2, 3).next_u64(), Rng::new(1, 3, 3).next_u64());
        assert_ne!(Rng::new(1, 2, 3).next_u64(), Rng::new(2, 2, 3).next_u64());
    }

    #[test]
    fn known_first_value_never_changes() {
        // Pins the stream: changing it changes every generated extract.
        assert_eq!(mix(0), 0);
        assert_eq!(mix(1), 0x5692_161D_100B_05E5);
    }

    #[test]
    fn permutation_is_a_bijection() {
        for n in [1u64, 2, 9, 100, 1000, 4097] {
            let p = Permutation::new(n, 7);
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let j = p.apply(i) as usize;
                assert!(!seen[j], "n={n} collides at {i}");
                seen[j] = true;
            }
        }
    }

    #[test]
    fn skewed_count_has_the_requested_mean() {
        let mut r = Rng::new(3, 0, 0);
        let n = 200_000;
        let total: u64 = (0..n).map(|_| r.skewed_count(10.0)).sum();
        let mean = total as f64 / n as f64;
        assert!((mean - 10.0).abs() < 0.2, "{mean}");
    }

    #[test]
    fn weighted_respects_weights() {
        let mut r = Rng::new(5, 0, 0);
        let cum = [1u64, 1, 4]; // weights 1, 0, 3
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            counts[r.weighted(&cum)] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!(counts[2] > 2 * counts[0], "{counts:?}");
    }
}
