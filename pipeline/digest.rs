//! SHA-256 and lowercase hex: the one place the crate turns bytes into digests and hex.
//!
//! Infrastructure, below every stage: it imports nothing from the crate. Manifests,
//! the audit chain, release records and dataset verification all hash through here, so
//! a file's digest is computed the same way everywhere. Danger: [`sha256_file`] streams
//! a file in fixed-size blocks; never replace it with a whole-file read, a dataset can be
//! larger than memory.

use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes` into `out`, which must be exactly twice as long.
///
/// The allocation-free form for hot loops (pseudonyms); everywhere else use [`hex`].
pub fn hex_into(bytes: &[u8], out: &mut [u8]) {
    debug_assert_eq!(out.len(), 2 * bytes.len());
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[(b >> 4) as usize];
        pair[1] = HEX[(b & 0xf) as usize];
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Whether `s` looks like a lowercase hex SHA-256 (64 characters of `0-9a-f`).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// SHA-256 (hex) and size of everything `reader` yields, read in 1 MiB blocks.
pub fn sha256_reader(mut reader: impl Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

/// SHA-256 (hex) and size of the file at `path`, streamed: memory stays flat whatever
/// the file's size.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    sha256_reader(std::fs::File::open(path)?)
}

/// A writer that hashes and counts what passes through to `inner`.
pub struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wrap `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// The inner writer, the hex SHA-256 and the number of bytes written.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex(&self.hasher.finalize()), self.bytes)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_sha256_hex(&sha256_hex(b"")));
        assert!(!is_sha256_hex("ABC"));
    }

    #[test]
    fn hex_forms_agree() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut out = vec![0u8; 512];
        hex_into(&bytes, &mut out);
        assert_eq!(String::from_utf8(out).ok(), Some(hex(&bytes)));
    }

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (h, n) = sha256_reader(&data[..]).expect("in-memory read");
        assert_eq!(n, data.len() as u64);
        assert_eq!(h, sha256_hex(&data));
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(&data).expect("in-memory write");
        let (inner, h2, n2) = w.finish();
        assert_eq!((h2, n2), (h, n));
        assert_eq!(inner, data);
    }
}
