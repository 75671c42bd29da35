//! HMAC-SHA256 of several 10-digit messages at once with the x86 SHA extensions (SHA-NI),
//! their compressions interleaved so that one message's rounds run while another's wait.
//!
//! One SHA-NI compression is a chain of 32 dependent `sha256rnds2` instructions: alone it
//! waits on each one's latency (about 40 ns per block on this project's machines). Lanes of
//! independent messages advance round by round together, so the CPU overlaps them and the
//! cost per block approaches the instructions' throughput instead. Messages are built as
//! big-endian words directly (an NHS number's digits, the padding and the length are known
//! in advance), and the outer block takes the inner state words as they are: no bytes are
//! written and read back.
//!
//! Must never be called without [`available`] having said yes on this CPU (the caller
//! checks once when the kernel is keyed); every function here is compiled for the SHA
//! extensions. Holds no key material beyond the call: mid-states come in by reference.

use std::arch::x86_64::{
    __m128i, _mm_add_epi32, _mm_alignr_epi8, _mm_extract_epi32, _mm_set_epi32,
    _mm_sha256msg1_epu32, _mm_sha256msg2_epu32, _mm_sha256rnds2_epu32, _mm_shuffle_epi32,
};

use super::{DIGITS, K};

/// Whether this CPU can run the functions in this module.
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("sha")
        && std::arch::is_x86_feature_detected!("sse2")
        && std::arch::is_x86_feature_detected!("ssse3")
        && std::arch::is_x86_feature_detected!("sse4.1")
}

/// Four message words as one vector, first word in the lowest lane.
#[inline]
#[target_feature(enable = "sse2")]
fn words4(w: [u32; 4]) -> __m128i {
    _mm_set_epi32(w[3] as i32, w[2] as i32, w[1] as i32, w[0] as i32)
}

/// A state a..h in SHA-NI's register layout: (ABEF, CDGH), `a` in the highest lane.
#[inline]
#[target_feature(enable = "sse2")]
fn load_state(s: &[u32; 8]) -> (__m128i, __m128i) {
    let [a, b, c, d, e, f, g, h] = s.map(|x| x as i32);
    (_mm_set_epi32(a, b, e, f), _mm_set_epi32(c, d, g, h))
}

/// The state a..h back out of (ABEF, CDGH).
#[inline]
#[target_feature(enable = "sse2,sse4.1")]
fn store_state(abef: __m128i, cdgh: __m128i) -> [u32; 8] {
    [
        _mm_extract_epi32(abef, 3),
        _mm_extract_epi32(abef, 2),
        _mm_extract_epi32(cdgh, 3),
        _mm_extract_epi32(cdgh, 2),
        _mm_extract_epi32(abef, 1),
        _mm_extract_epi32(abef, 0),
        _mm_extract_epi32(cdgh, 1),
        _mm_extract_epi32(cdgh, 0),
    ]
    .map(|x| x as u32)
}

/// Compress one block per lane into each lane's (ABEF, CDGH), all lanes round by round.
#[inline]
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
fn compress<const G: usize>(
    abef: &mut [__m128i; G],
    cdgh: &mut [__m128i; G],
    mut w: [[__m128i; 4]; G],
) {
    let (abef0, cdgh0) = (*abef, *cdgh);
    macro_rules! round4 {
        ($i:literal) => {
            let k = words4([K[4 * $i], K[4 * $i + 1], K[4 * $i + 2], K[4 * $i + 3]]);
            for l in 0..G {
                let m = if $i < 4 {
                    w[l][$i % 4]
                } else {
                    // W[i] from W[i-4], W[i-3], W[i-2], W[i-1] (slots i, i+1, i+2, i+3 mod 4).
                    let v = &w[l];
                    let t = _mm_add_epi32(
                        _mm_sha256msg1_epu32(v[$i % 4], v[($i + 1) % 4]),
                        _mm_alignr_epi8(v[($i + 3) % 4], v[($i + 2) % 4], 4),
                    );
                    let next = _mm_sha256msg2_epu32(t, v[($i + 3) % 4]);
                    w[l][$i % 4] = next;
                    next
                };
                let t = _mm_add_epi32(m, k);
                cdgh[l] = _mm_sha256rnds2_epu32(cdgh[l], abef[l], t);
                abef[l] = _mm_sha256rnds2_epu32(abef[l], cdgh[l], _mm_shuffle_epi32(t, 0x0E));
            }
        };
    }
    round4!(0);
    round4!(1);
    round4!(2);
    round4!(3);
    round4!(4);
    round4!(5);
    round4!(6);
    round4!(7);
    round4!(8);
    round4!(9);
    round4!(10);
    round4!(11);
    round4!(12);
    round4!(13);
    round4!(14);
    round4!(15);
    for l in 0..G {
        abef[l] = _mm_add_epi32(abef[l], abef0[l]);
        cdgh[l] = _mm_add_epi32(cdgh[l], cdgh0[l]);
    }
}

/// HMAC-SHA256 of `G` messages from the key's inner and outer mid-states, as 8 state
/// words each (the tag's big-endian words).
///
/// # Safety
///
/// The CPU must have SHA, SSE2, SSSE3 and SSE4.1 ([`available`] says so); the caller checks once.
#[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
pub fn hmac_words<const G: usize>(
    inner: &[u32; 8],
    outer: &[u32; 8],
    messages: &[[u8; DIGITS]; G],
) -> [[u32; 8]; G] {
    // Inner block: 10 digits, 0x80, zeros, bit length of key block + message.
    const INNER_BITS: u32 = (64 + DIGITS as u32) * 8;
    const OUTER_BITS: u32 = (64 + 32) * 8;
    let zero = words4([0; 4]);
    let w: [[__m128i; 4]; G] = std::array::from_fn(|l| {
        let m = &messages[l];
        [
            words4([
                u32::from_be_bytes([m[0], m[1], m[2], m[3]]),
                u32::from_be_bytes([m[4], m[5], m[6], m[7]]),
                u32::from_be_bytes([m[8], m[9], 0x80, 0]),
                0,
            ]),
            zero,
            zero,
            words4([0, 0, 0, INNER_BITS]),
        ]
    });
    let (a, c) = load_state(inner);
    let (mut abef, mut cdgh) = ([a; G], [c; G]);
    compress(&mut abef, &mut cdgh, w);
    // Outer block: the inner digest's words as they are, 0x80, zeros, bit length.
    let w: [[__m128i; 4]; G] = std::array::from_fn(|l| {
        let s = store_state(abef[l], cdgh[l]);
        [
            words4([s[0], s[1], s[2], s[3]]),
            words4([s[4], s[5], s[6], s[7]]),
            words4([0x8000_0000, 0, 0, 0]),
            words4([0, 0, 0, OUTER_BITS]),
        ]
    });
    let (a, c) = load_state(outer);
    let (mut abef, mut cdgh) = ([a; G], [c; G]);
    compress(&mut abef, &mut cdgh, w);
    std::array::from_fn(|l| store_state(abef[l], cdgh[l]))
}
