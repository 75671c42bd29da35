//! The fast HMAC-SHA256 kernel behind every pseudonym: two SHA-256 compressions per
//! NHS number, the physical minimum.
//!
//! HMAC(key, m) = SHA-256((key ⊕ opad) ‖ SHA-256((key ⊕ ipad) ‖ m)). The first block of
//! each hash depends only on the key, so [`HmacKernel::new`] compresses both once and keeps
//! the two mid-states; each 10-digit message is then one compression for the inner block
//! (digits, padding, length) and one for the outer block (inner digest, padding, length),
//! through `sha2::compress256`, which uses SHA-NI where the CPU has it. Numbers go through
//! in lanes of eight, stage by stage, so no compression waits on the stores that built its
//! block. Hex is written by a 256-entry table of character pairs. Sits under [`crate::pseudonym::Pseudonymiser`];
//! the result equals the `hmac` crate's bit for bit (tests below).
//!
//! Danger: the two mid-states are key-equivalent (anyone holding them can compute every
//! pseudonym), so they get the same care as the key: never printed (`Debug` is redacted),
//! never serialised, overwritten on drop. They must never be shipped to another process.

use sha2::digest::generic_array::GenericArray;

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
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

/// HMAC-SHA256 keyed once, for 10-byte messages. Cheap to clone (64 bytes).
#[derive(Clone)]
pub struct HmacKernel {
    /// State after compressing key ⊕ ipad.
    inner: [u32; 8],
    /// State after compressing key ⊕ opad.
    outer: [u32; 8],
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
    /// Precompute the inner and outer mid-states of a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Self {
        HmacKernel {
            inner: keyed_state(key, 0x36),
            outer: keyed_state(key, 0x5c),
        }
    }

    /// HMAC-SHA256 of `N` independent 10-byte messages, as 8 big-endian state words each.
    ///
    /// Stage by stage over all lanes (every inner block written, then every inner block
    /// compressed, and so on), so each block is written long before the compression reads
    /// it: SHA-NI's 16-byte loads of a block just written with narrow stores would stall
    /// on store forwarding (about 40 ns per number on this machine's CPUs).
    #[inline]
    fn words<const N: usize>(&self, messages: &[[u8; DIGITS]; N]) -> [[u32; 8]; N] {
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
        zeroize::Zeroize::zeroize(&mut inner);
        outer
    }

    /// HMAC-SHA256(key, message) for a 10-byte message.
    #[inline]
    pub fn tag(&self, message: &[u8; DIGITS]) -> [u8; 32] {
        let [words] = self.words(&[*message]);
        let mut out = [0u8; 32];
        for (chunk, w) in out.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// Lowercase hex of HMAC-SHA256(key, message) into `out`.
    #[inline]
    pub fn hex(&self, message: &[u8; DIGITS], out: &mut [u8; 64]) {
        let [words] = self.words(&[*message]);
        hex_words(&words, out);
    }

    /// [`HmacKernel::hex`] of `N` messages at once (the fast path: use 8).
    #[inline]
    pub fn hex_lanes<const N: usize>(&self, messages: &[[u8; DIGITS]; N], out: &mut [[u8; 64]; N]) {
        for (words, slot) in self.words(messages).iter().zip(out.iter_mut()) {
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
        fn lanes_equal_one_at_a_time(key in any::<[u8; 32]>(), messages in any::<[[u8; 10]; 8]>()) {
            let k = HmacKernel::new(&key);
            let mut lanes = [[0u8; 64]; 8];
            k.hex_lanes(&messages, &mut lanes);
            for (m, lane) in messages.iter().zip(&lanes) {
                let expected = crate::digest::hex(&reference(&key, m));
                prop_assert_eq!(&lane[..], expected.as_bytes());
            }
        }

        #[test]
        fn digits_equal_formatting(n in 0u64..10_000_000_000) {
            let formatted = format!("{n:010}");
            prop_assert_eq!(&ascii_digits(n)[..], formatted.as_bytes());
        }
    }
}
