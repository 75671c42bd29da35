//! HMAC-SHA256 of sixteen 10-digit messages at once in AVX-512 registers: one message
//! per 32-bit lane, every SHA-256 round computed for all sixteen with one instruction per
//! step (`vprord` rotates, `vpternlogd` for the three-way XORs, choose and majority).
//!
//! Must never be called without [`available`] having said yes on this CPU (the caller
//! checks once when the kernel is keyed). Holds no key material beyond the call.

use std::arch::x86_64::{
    __m128i, __m512i, _mm_extract_epi32, _mm512_add_epi32, _mm512_extracti32x4_epi32,
    _mm512_ror_epi32, _mm512_set1_epi32, _mm512_setr_epi32, _mm512_srli_epi32,
    _mm512_ternarylogic_epi32,
};

use super::{DIGITS, K};

/// Messages per call.
pub const LANES: usize = 16;

/// Whether this CPU can run the functions in this module.
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// `vpternlogd` truth tables: a ^ b ^ c, a ? b : c, majority(a, b, c).
const XOR3: i32 = 0x96;
const CHOOSE: i32 = 0xCA;
const MAJORITY: i32 = 0xE8;

/// One lane per message: `x[l]` in lane `l`.
#[inline]
#[target_feature(enable = "avx512f")]
fn lanes(x: &[u32; LANES]) -> __m512i {
    let x = x.map(|v| v as i32);
    _mm512_setr_epi32(
        x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8], x[9], x[10], x[11], x[12], x[13],
        x[14], x[15],
    )
}

/// The sixteen lanes back out.
#[inline]
#[target_feature(enable = "avx512f,sse4.1")]
fn unlanes(v: __m512i) -> [u32; LANES] {
    let quarter = |q: __m128i| {
        [
            _mm_extract_epi32(q, 0),
            _mm_extract_epi32(q, 1),
            _mm_extract_epi32(q, 2),
            _mm_extract_epi32(q, 3),
        ]
    };
    let parts = [
        quarter(_mm512_extracti32x4_epi32(v, 0)),
        quarter(_mm512_extracti32x4_epi32(v, 1)),
        quarter(_mm512_extracti32x4_epi32(v, 2)),
        quarter(_mm512_extracti32x4_epi32(v, 3)),
    ];
    std::array::from_fn(|i| parts[i / 4][i % 4] as u32)
}

/// One SHA-256 compression per lane: `state` (a..h, one vector each) absorbs the block
/// whose sixteen words are `w`.
#[inline]
#[target_feature(enable = "avx512f")]
fn compress(state: &mut [__m512i; 8], block: &[__m512i; 16]) {
    let mut w = [_mm512_set1_epi32(0); 64];
    w[..16].copy_from_slice(block);
    for i in 16..64 {
        let (x, y) = (w[i - 15], w[i - 2]);
        let s0 = _mm512_ternarylogic_epi32(
            _mm512_ror_epi32(x, 7),
            _mm512_ror_epi32(x, 18),
            _mm512_srli_epi32(x, 3),
            XOR3,
        );
        let s1 = _mm512_ternarylogic_epi32(
            _mm512_ror_epi32(y, 17),
            _mm512_ror_epi32(y, 19),
            _mm512_srli_epi32(y, 10),
            XOR3,
        );
        w[i] = _mm512_add_epi32(
            _mm512_add_epi32(w[i - 16], s0),
            _mm512_add_epi32(w[i - 7], s1),
        );
    }
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for i in 0..64 {
        let big_s1 = _mm512_ternarylogic_epi32(
            _mm512_ror_epi32(e, 6),
            _mm512_ror_epi32(e, 11),
            _mm512_ror_epi32(e, 25),
            XOR3,
        );
        let ch = _mm512_ternarylogic_epi32(e, f, g, CHOOSE);
        let t1 = _mm512_add_epi32(
            _mm512_add_epi32(h, big_s1),
            _mm512_add_epi32(ch, _mm512_add_epi32(w[i], _mm512_set1_epi32(K[i] as i32))),
        );
        let big_s0 = _mm512_ternarylogic_epi32(
            _mm512_ror_epi32(a, 2),
            _mm512_ror_epi32(a, 13),
            _mm512_ror_epi32(a, 22),
            XOR3,
        );
        let maj = _mm512_ternarylogic_epi32(a, b, c, MAJORITY);
        h = g;
        g = f;
        f = e;
        e = _mm512_add_epi32(d, t1);
        d = c;
        c = b;
        b = a;
        a = _mm512_add_epi32(t1, _mm512_add_epi32(big_s0, maj));
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *s = _mm512_add_epi32(*s, v);
    }
}

/// HMAC-SHA256 of sixteen messages from the key's inner and outer mid-states, as 8 state
/// words each (the tag's big-endian words).
///
/// # Safety
///
/// The CPU must have AVX-512F and SSE4.1 ([`available`] says so); the caller checks once.
#[target_feature(enable = "avx512f,sse4.1")]
pub fn hmac_words(
    inner: &[u32; 8],
    outer: &[u32; 8],
    messages: &[[u8; DIGITS]; LANES],
) -> [[u32; 8]; LANES] {
    const INNER_BITS: i32 = (64 + DIGITS as i32) * 8;
    const OUTER_BITS: i32 = (64 + 32) * 8;
    let zero = _mm512_set1_epi32(0);
    let word = |at: usize| -> [u32; LANES] {
        std::array::from_fn(|l| {
            let m = &messages[l];
            let b = |i: usize| {
                m.get(i)
                    .copied()
                    .unwrap_or(if i == DIGITS { 0x80 } else { 0 })
            };
            u32::from_be_bytes([b(at), b(at + 1), b(at + 2), b(at + 3)])
        })
    };
    let mut block = [zero; 16];
    block[0] = lanes(&word(0));
    block[1] = lanes(&word(4));
    block[2] = lanes(&word(8));
    block[15] = _mm512_set1_epi32(INNER_BITS);
    let mut state = inner.map(|s| _mm512_set1_epi32(s as i32));
    compress(&mut state, &block);
    let mut block = [zero; 16];
    block[..8].copy_from_slice(&state);
    block[8] = _mm512_set1_epi32(0x8000_0000_u32 as i32);
    block[15] = _mm512_set1_epi32(OUTER_BITS);
    let mut state = outer.map(|s| _mm512_set1_epi32(s as i32));
    compress(&mut state, &block);
    let words = state.map(|v| unlanes(v));
    std::array::from_fn(|l| std::array::from_fn(|j| words[j][l]))
}
