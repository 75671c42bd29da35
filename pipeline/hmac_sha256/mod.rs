//! The fast HMAC-SHA256 kernel behind every pseudonym: two SHA-256 compressions per
//! NHS number, the physical minimum, several numbers at once.
//!
//! HMAC(key, m) = SHA-256((key ⊕ opad) ‖ SHA-256((key ⊕ ipad) ‖ m)). The first block of
//! each hash depends only on the key, so [`HmacKernel::new`] compresses both once and keeps
//! the two mid-states; each 10-digit message is then one compression for the inner block
//! (digits, padding, length) and one for the outer block (inner digest, padding, length).
//! [`HmacKernel::hex_lanes`] hashes [`LANES`] numbers per call on the fastest [`Backend`]
//! this CPU has, chosen once when the kernel is keyed: sixteen numbers side by side in
//! AVX-512 registers ([`avx512`]), or the SHA extensions with four numbers' rounds
//! interleaved so each hides the others' latency ([`sha_ni`]), or `sha2::compress256`
//! anywhere else. Hex is written by a 256-entry table of character pairs. Sits under
//! [`crate::pseudonym::Pseudonymiser`]; every backend equals the `hmac` crate bit for bit
//! (property tests below, and the test vectors of docs/contracts.md, Pseudonym).
//!
//! The crate's one `unsafe` is here: calling a function compiled for CPU features the
//! baseline target lacks, which is sound only on a CPU that has them. [`Backend::detect`]
//! checks, and [`HmacKernel::with_backend`] refuses a backend this CPU cannot run, so a
//! kernel never holds one it may not call.
//!
//! Danger: the two mid-states are key-equivalent (anyone holding them can compute every
//! pseudonym), so they get the same care as the key: never printed (`Debug` is redacted),
//! never serialised, overwritten on drop. They must never be shipped to another process.

#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(target_arch = "x86_64")]
pub mod sha_ni;

use sha2::digest::generic_array::GenericArray;

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// SHA-256 round constants (FIPS 180-4, 4.2.2), for the backends that run the rounds
/// themselves ([`avx512`], [`sha_ni`]).
#[cfg(target_arch = "x86_64")]
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// SHA-256 block length in bytes.
const BLOCK: usize = 64;

/// Length of the hashed message: an NHS number's 10 ASCII digits.
pub const DIGITS: usize = 10;

/// Lowercase hex pairs for every byte value: one lookup writes two characters.
static HEX_PAIRS: [[u8; 2]; 256] = hex_pairs();

const fn hex_pairs() -> [[u8; 2]; 256] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
}

/// Numbers hashed per [`HmacKernel::hex_lanes`] call.
pub const LANES: usize = 16;

/// How a kernel computes its compressions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Sixteen numbers in AVX-512 lanes (x86-64 with AVX-512F).
    Avx512,
    /// The SHA extensions, four numbers' rounds interleaved (x86-64 with SHA-NI).
    ShaNi,
    /// `sha2::compress256` one block at a time (any CPU).
    Portable,
}

impl Backend {
    /// The fastest backend this CPU can run.
    pub fn detect() -> Backend {
        [Backend::Avx512, Backend::ShaNi]
            .into_iter()
            .find(|b| b.available())
            .unwrap_or(Backend::Portable)
    }

    /// Whether this CPU can run the backend.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => avx512::available(),
            #[cfg(target_arch = "x86_64")]
            Backend::ShaNi => sha_ni::available(),
            Backend::Portable => true,
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// HMAC-SHA256 keyed once, for 10-byte messages. Cheap to clone (64 bytes).
#[derive(Clone)]
pub struct HmacKernel {
    /// State after compressing key ⊕ ipad.
    inner: [u32; 8],
    /// State after compressing key ⊕ opad.
    outer: [u32; 8],
    /// Checked runnable on this CPU when the kernel was made.
    backend: Backend,
    /// SHA-NI for single numbers, where the CPU has it.
    single_sha_ni: bool,
}

impl std::fmt::Debug for HmacKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKernel(<keyed>)")
    }
}

impl Drop for HmacKernel {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.inner);
        zeroize::Zeroize::zeroize(&mut self.outer);
    }
}

fn compress(state: &mut [u32; 8], block: &[u8; BLOCK]) {
    sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
}

/// The mid-state after one block of `key ⊕ pad` (key zero-padded to 64 bytes).
fn keyed_state(key: &[u8; 32], pad: u8) -> [u32; 8] {
    let mut block = [pad; BLOCK];
    for (b, k) in block.iter_mut().zip(key) {
        *b ^= k;
    }
    let mut state = H0;
    compress(&mut state, &block);
    zeroize::Zeroize::zeroize(&mut block);
    state
}

/// The final padding block of a message whose `len` bytes (after one key block) come
/// first: 0x80, zeros, and the total bit length big-endian in the last 8 bytes.
const fn padded_block(len: usize) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[len] = 0x80;
    let bits = ((BLOCK + len) as u64 * 8).to_be_bytes();
    let mut i = 0;
    while i < 8 {
        b[BLOCK - 8 + i] = bits[i];
        i += 1;
    }
    b
}

/// Inner block template: 10 message bytes, then padding for 64 + 10 bytes.
const INNER_PAD: [u8; BLOCK] = padded_block(DIGITS);
/// Outer block template: 32-byte inner digest, then padding for 64 + 32 bytes.
const OUTER_PAD: [u8; BLOCK] = padded_block(32);

impl HmacKernel {
    /// Precompute the inner and outer mid-states of a 32-byte key, for the fastest
    /// backend this CPU has.
    pub fn new(key: &[u8; 32]) -> Self {
        let backend = Backend::detect();
        HmacKernel {
            inner: keyed_state(key, 0x36),
            outer: keyed_state(key, 0x5c),
            backend,
            single_sha_ni: backend != Backend::Portable && Backend::ShaNi.available(),
        }
    }

    /// [`HmacKernel::new`] on a chosen backend (benchmarks, tests); `None` if this CPU
    /// cannot run it.
    pub fn with_backend(key: &[u8; 32], backend: Backend) -> Option<Self> {
        backend.available().then(|| HmacKernel {
            backend,
            single_sha_ni: backend == Backend::ShaNi,
            ..HmacKernel::new(key)
        })
    }

    /// The backend this kernel runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// HMAC-SHA256 of [`LANES`] messages, as 8 big-endian state words each.
    #[allow(unsafe_code)]
    fn words_lanes(&self, messages: &[[u8; DIGITS]; LANES]) -> [[u32; 8]; LANES] {
        match self.backend {
            // SAFETY: a kernel holds `Avx512` only if `Backend::available` found AVX-512F
            // and SSE4.1 on this CPU (`new`, `with_backend`), the features the callee is
            // compiled for.
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => unsafe { avx512::hmac_words(&self.inner, &self.outer, messages) },
            #[cfg(target_arch = "x86_64")]
            Backend::ShaNi => {
                let mut out = [[0u32; 8]; LANES];
                for (g, o) in out.chunks_exact_mut(4).enumerate() {
                    let m: [[u8; DIGITS]; 4] = std::array::from_fn(|i| messages[4 * g + i]);
                    // SAFETY: a kernel holds `ShaNi` only if `Backend::available` found
                    // SHA, SSE2, SSSE3 and SSE4.1 on this CPU.
                    let w = unsafe { sha_ni::hmac_words(&self.inner, &self.outer, &m) };
                    o.copy_from_slice(&w);
                }
                out
            }
            _ => self.portable_words(messages),
        }
    }

    /// HMAC-SHA256 of one message, as 8 big-endian state words.
    #[allow(unsafe_code)]
    fn words_one(&self, message: &[u8; DIGITS]) -> [u32; 8] {
        #[cfg(target_arch = "x86_64")]
        if self.single_sha_ni {
            // SAFETY: `single_sha_ni` is set only when `Backend::ShaNi.available()` found
            // SHA, SSE2, SSSE3 and SSE4.1 on this CPU.
            let [w] = unsafe { sha_ni::hmac_words(&self.inner, &self.outer, &[*message]) };
            return w;
        }
        let [w] = self.portable_words(&[*message]);
        w
    }

    /// HMAC-SHA256 of `N` independent 10-byte messages through `sha2::compress256`, as 8
    /// big-endian state words each.
    ///
    /// Stage by stage over all lanes (every inner block written, then every inner block
    /// compressed, and so on), so each block is written long before the compression reads
    /// it: SHA-NI's 16-byte loads of a block just written with narrow stores would stall
    /// on store forwarding (about 40 ns per number on this machine's CPUs).
    fn portable_words<const N: usize>(&self, messages: &[[u8; DIGITS]; N]) -> [[u32; 8]; N] {
        let mut blocks = [INNER_PAD; N];
        for (block, m) in blocks.iter_mut().zip(messages) {
            block[..DIGITS].copy_from_slice(m);
        }
        let mut inner = [self.inner; N];
        for (state, block) in inner.iter_mut().zip(&blocks) {
            compress(state, block);
        }
        let mut blocks = [OUTER_PAD; N];
        for (block, state) in blocks.iter_mut().zip(&inner) {
            for (chunk, w) in block[..32].chunks_exact_mut(4).zip(state) {
                chunk.copy_from_slice(&w.to_be_bytes());
            }
        }
        let mut outer = [self.outer; N];
        for (state, block) in outer.iter_mut().zip(&blocks) {
            compress(state, block);
        }
        outer
    }

    /// HMAC-SHA256(key, message) for a 10-byte message.
    #[inline]
    pub fn tag(&self, message: &[u8; DIGITS]) -> [u8; 32] {
        let words = self.words_one(message);
        let mut out = [0u8; 32];
        for (chunk, w) in out.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// Lowercase hex of HMAC-SHA256(key, message) into `out`.
    #[inline]
    pub fn hex(&self, message: &[u8; DIGITS], out: &mut [u8; 64]) {
        hex_words(&self.words_one(message), out);
    }

    /// [`HmacKernel::hex`] of [`LANES`] messages at once (the fast path).
    #[inline]
    pub fn hex_lanes(&self, messages: &[[u8; DIGITS]; LANES], out: &mut [[u8; 64]; LANES]) {
        for (words, slot) in self.words_lanes(messages).iter().zip(out.iter_mut()) {
            hex_words(words, slot);
        }
    }
}

/// Lowercase hex of 8 big-endian words.
#[inline]
fn hex_words(words: &[u32; 8], out: &mut [u8; 64]) {
    for (chunk, w) in out.chunks_exact_mut(8).zip(words) {
        for (pair, b) in chunk.chunks_exact_mut(2).zip(w.to_be_bytes()) {
            pair.copy_from_slice(&HEX_PAIRS[b as usize]);
        }
    }
}

/// The 10 ASCII digits of `n` (leading zeros kept); `n` must be below 10^10.
#[inline]
pub fn ascii_digits(n: u64) -> [u8; DIGITS] {
    // Two 5-digit halves keep each division a 32-bit multiply-shift.
    let (hi, lo) = ((n / 100_000) as u32, (n % 100_000) as u32);
    let mut out = [0u8; DIGITS];
    for (i, half) in [hi, lo].into_iter().enumerate() {
        let mut m = half;
        for d in out[i * 5..i * 5 + 5].iter_mut().rev() {
            *d = b'0' + (m % 10) as u8;
            m /= 10;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use proptest::prelude::*;

    fn reference(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
        mac.update(message);
        mac.finalize().into_bytes().into()
    }

    fn design_key() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn design_vectors() {
        let k = HmacKernel::new(&design_key());
        let mut out = [0u8; 64];
        k.hex(b"9434765919", &mut out);
        assert_eq!(
            &out,
            b"dd5c602eeb31d60c7c0d662c897231dda00e13cdf945b14cad185a4a7125826c"
        );
        k.hex(b"9434765870", &mut out);
        assert_eq!(
            &out,
            b"d35f0b68631da84ee4fc64a0d8efd922ee27d9f2c3eb9adf9726581991291473"
        );
    }

    #[test]
    fn hex_table_is_lowercase_hex() {
        for b in 0..=255u8 {
            assert_eq!(HEX_PAIRS[b as usize], *format!("{b:02x}").as_bytes());
        }
    }

    #[test]
    fn ascii_digits_keep_leading_zeros() {
        assert_eq!(&ascii_digits(0), b"0000000000");
        assert_eq!(&ascii_digits(10_000_008), b"0010000008");
        assert_eq!(&ascii_digits(9_999_999_999), b"9999999999");
        assert_eq!(&ascii_digits(9_434_765_919), b"9434765919");
    }

    #[test]
    fn this_machines_backends_are_tested() {
        // The property test above skips backends this CPU lacks; under CI (whose machines
        // have AVX-512 and SHA-NI) a missing one means the fast paths went untested.
        if std::env::var("CI").as_deref() == Ok("true") && cfg!(target_arch = "x86_64") {
            assert!(Backend::Avx512.available(), "CI machine without AVX-512F");
            assert!(Backend::ShaNi.available(), "CI machine without SHA-NI");
        }
        assert!(Backend::Portable.available());
        assert!(Backend::detect().available());
    }

    #[test]
    fn debug_is_redacted() {
        let k = HmacKernel::new(&design_key());
        assert_eq!(format!("{k:?}"), "HmacKernel(<keyed>)");
    }

    proptest! {
        #[test]
        fn equals_the_hmac_crate(key in any::<[u8; 32]>(), message in any::<[u8; 10]>()) {
            let k = HmacKernel::new(&key);
            let expected = reference(&key, &message);
            prop_assert_eq!(k.tag(&message), expected);
            let mut out = [0u8; 64];
            k.hex(&message, &mut out);
            let expected_hex = crate::digest::hex(&expected);
            prop_assert_eq!(&out[..], expected_hex.as_bytes());
        }

        #[test]
        fn every_backend_equals_the_hmac_crate(
            key in any::<[u8; 32]>(),
            messages in any::<[[u8; 10]; LANES]>(),
        ) {
            for backend in [Backend::Avx512, Backend::ShaNi, Backend::Portable] {
                let Some(k) = HmacKernel::with_backend(&key, backend) else {
                    continue;
                };
                let mut lanes = [[0u8; 64]; LANES];
                k.hex_lanes(&messages, &mut lanes);
                for (m, lane) in messages.iter().zip(&lanes) {
                    let expected = reference(&key, m);
                    let expected_hex = crate::digest::hex(&expected);
                    prop_assert_eq!(&lane[..], expected_hex.as_bytes());
                    prop_assert_eq!(k.tag(m), expected);
                }
            }
        }

        #[test]
        fn digits_equal_formatting(n in 0u64..10_000_000_000) {
            let formatted = format!("{n:010}");
            prop_assert_eq!(&ascii_digits(n)[..], formatted.as_bytes());
        }
    }
}
