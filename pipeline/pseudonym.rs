//! Project keys and the pseudonym kernel: `patient_pseudonym` = lowercase hex of
//! HMAC-SHA256(key, the NHS number's 10 ASCII digits), exactly as docs/contracts.md
//! (Pseudonym) defines.
//!
//! Owns the key file format (64 hex characters, optional newline, mode 0600), key
//! generation, the key fingerprint and the HMAC kernel over Arrow arrays. Danger: this
//! module holds the one secret of a project. A [`ProjectKey`] never prints itself
//! (`Debug` shows only the fingerprint), no error quotes the key file's content, and the
//! key bytes are overwritten when the key is dropped.

use crate::digest::hex_into;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::array::{Array, StringArray, UInt32Array, UInt64Array};
use arrow::buffer::{Buffer, OffsetBuffer};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::hmac_sha256::{HmacKernel, LANES, ascii_digits};
use crate::nhs_number::NhsNumber;

type HmacSha256 = Hmac<Sha256>;

/// Errors loading or creating a key file. None of them contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Group or others may read the key file.
    #[error(
        "key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not 64 hex characters.
    #[error(
        "key file {path} is malformed: {reason}; expected exactly 64 hex characters (32 bytes) and an optional newline, as written by `tre keygen`"
    )]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong (never the content).
        reason: String,
    },
    /// Well-formed but obviously not random.
    #[error(
        "key file {path} holds a weak key ({reason}); generate a new one with `tre keygen --out FILE`"
    )]
    Weak {
        /// The key file.
        path: PathBuf,
        /// Why it is weak.
        reason: String,
    },
    /// The OS random source failed.
    #[error("cannot read the operating system's random source: {source}")]
    Random {
        /// What the OS said.
        source: getrandom::Error,
    },
    /// `tre keygen` would overwrite an existing file.
    #[error("{0} already exists; refusing to overwrite a key file")]
    Exists(PathBuf),
    /// Not a regular file of ours (a FIFO, a device, another user's file) or too large.
    #[error("key file: {0}")]
    Untrusted(#[from] crate::trusted_file::TrustedFileError),
}

impl crate::error::Classify for KeyError {
    /// A weak, exposed or malformed key is refused by a rule; I/O problems fail.
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            KeyError::Permissions { .. }
            | KeyError::Malformed { .. }
            | KeyError::Weak { .. }
            | KeyError::Exists(_) => ErrorKind::Refused,
            KeyError::Untrusted(e) => crate::error::Classify::kind(e),
            _ => ErrorKind::Failed,
        }
    }
}

/// A project's 32-byte secret key.
pub struct ProjectKey {
    bytes: [u8; 32],
}

impl std::fmt::Debug for ProjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProjectKey(fingerprint {})", self.fingerprint())
    }
}

impl Drop for ProjectKey {
    fn drop(&mut self) {
        // Overwrite the secret before the memory is released.
        zeroize::Zeroize::zeroize(&mut self.bytes);
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl ProjectKey {
    /// A key from raw bytes (tests and `keygen`).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        ProjectKey { bytes }
    }

    /// Parse key file content; `path` is for messages only.
    pub fn parse(content: &[u8], path: &Path) -> Result<Self, KeyError> {
        let malformed = |reason: &str| KeyError::Malformed {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let body = content
            .strip_suffix(b"\r\n")
            .or_else(|| content.strip_suffix(b"\n"))
            .unwrap_or(content);
        if body.len() != 64 {
            return Err(malformed(&format!(
                "it holds {} characters before the newline",
                body.len()
            )));
        }
        let mut bytes = [0u8; 32];
        for (i, pair) in body.chunks_exact(2).enumerate() {
            match (hex_value(pair[0]), hex_value(pair[1])) {
                (Some(h), Some(l)) => bytes[i] = (h << 4) | l,
                _ => {
                    return Err(malformed(&format!(
                        "character {} is not a hex digit",
                        if hex_value(pair[0]).is_none() {
                            2 * i + 1
                        } else {
                            2 * i + 2
                        }
                    )));
                }
            }
        }
        let key = ProjectKey { bytes };
        let mut distinct = [false; 256];
        key.bytes.iter().for_each(|&b| distinct[b as usize] = true);
        let n = distinct.iter().filter(|&&d| d).count();
        if n < 8 {
            return Err(KeyError::Weak {
                path: path.to_path_buf(),
                reason: format!("only {n} distinct byte values; a random key has about 30"),
            });
        }
        Ok(key)
    }

    /// Load a key file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        let content = zeroize::Zeroizing::new(crate::trusted_file::read(path, 1024)?);
        Self::parse(&content, path)
    }

    /// Generate a key from the OS random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|source| KeyError::Random { source })?;
        Ok(ProjectKey { bytes })
    }

    /// Write this key to a new file with mode 0600 (never overwrites), fsynced.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists(path.to_path_buf())
            } else {
                io(e)
            }
        })?;
        let mut text = [0u8; 65];
        hex_into(&self.bytes, &mut text[..64]);
        text[64] = b'\n';
        f.write_all(&text).map_err(io)?;
        zeroize::Zeroize::zeroize(&mut text);
        f.sync_all().map_err(io)?;
        crate::durable::fsync_parent(path).map_err(io)
    }

    /// First 16 hex characters of HMAC-SHA256(key, "tre-key-fingerprint").
    pub fn fingerprint(&self) -> String {
        let mut mac = self.mac();
        mac.update(b"tre-key-fingerprint");
        let tag = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        hex_into(&tag[..8], &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    fn mac(&self) -> HmacSha256 {
        match HmacSha256::new_from_slice(&self.bytes) {
            Ok(m) => m,
            // HMAC accepts keys of any length.
            Err(_) => unreachable!("HMAC accepts any key length"),
        }
    }

    /// A reusable pseudonymiser holding the pre-keyed HMAC mid-states.
    pub fn pseudonymiser(&self) -> Pseudonymiser {
        Pseudonymiser {
            kernel: HmacKernel::new(&self.bytes),
        }
    }
}

/// The HMAC kernel, keyed once; cheap to clone per thread.
#[derive(Clone)]
pub struct Pseudonymiser {
    kernel: HmacKernel,
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymiser(<keyed>)")
    }
}

impl Pseudonymiser {
    /// The 32-byte HMAC of one NHS number.
    #[inline]
    pub fn tag(&self, n: NhsNumber) -> [u8; 32] {
        self.kernel.tag(&n.ascii_digits())
    }

    /// The 64-character lowercase hex pseudonym of one NHS number.
    pub fn pseudonym(&self, n: NhsNumber) -> String {
        let mut out = [0u8; 64];
        self.kernel.hex(&n.ascii_digits(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Pseudonymise a column of validated NHS numbers (as produced by
    /// [`crate::nhs_number::validate_array`]) into a hex `StringArray`, nulls preserved.
    ///
    /// One array on its own (the SQL function sees batches, not row groups) gains nothing
    /// from a map: a run of one patient's rows is hashed once, every other row anew, so
    /// distinct numbers cost one HMAC and a copy each.
    pub fn hex_array(&self, numbers: &UInt64Array) -> StringArray {
        let len = numbers.len();
        let mut offsets = Vec::with_capacity(len + 1);
        offsets.push(0i32);
        // Each valid row's hex, in row order; the rows that start a run of one number are
        // hashed straight into it, the rest copy their predecessor.
        let mut hex = vec![[0u8; 64]; len - numbers.null_count()];
        let mut starts: Vec<(u64, usize)> = Vec::new();
        let mut repeats: Vec<usize> = Vec::new();
        let mut last = None;
        let mut at = 0usize;
        for (i, &v) in numbers.values().iter().enumerate() {
            if numbers.is_valid(i) {
                if last == Some(v) {
                    repeats.push(at);
                } else {
                    starts.push((v, at));
                    last = Some(v);
                }
                at += 1;
            }
            offsets.push((at * 64) as i32);
        }
        self.hash_into(&starts, &mut hex);
        for k in repeats {
            hex[k] = hex[k - 1];
        }
        // Offsets are monotonic and values are ASCII by construction.
        StringArray::new(
            OffsetBuffer::new(offsets.into()),
            Buffer::from_vec(hex.into_flattened()),
            numbers.nulls().cloned(),
        )
    }

    /// Each row's slot in `cache`: the index of its number's pseudonym in
    /// [`PseudonymCache::values`], nulls preserved. Numbers new to the cache are added in
    /// order of first appearance and hashed once, [`LANES`] at a time, so rows in any
    /// order (one patient's rows together or interleaved with everyone else's) cost one
    /// HMAC per patient per cache; a row costs a map lookup, and a run of one patient's
    /// rows not even that. The slots are the cache's dictionary indices: the extract
    /// writes them as the Parquet dictionary of the pseudonym column.
    pub fn slots(&self, numbers: &UInt64Array, cache: &mut PseudonymCache) -> UInt32Array {
        let len = numbers.len();
        let mut slots: Vec<u32> = Vec::with_capacity(len);
        // Numbers new to the cache, with their slot.
        let mut todo: Vec<(u64, usize)> = Vec::new();
        let mut last: Option<(u64, u32)> = None;
        for (i, &v) in numbers.values().iter().enumerate() {
            if !numbers.is_valid(i) {
                slots.push(0);
                continue;
            }
            let slot = match last {
                Some((p, slot)) if p == v => slot,
                _ => {
                    let next = cache.hex.len();
                    let slot = *cache.slot.entry(v).or_insert_with(|| {
                        cache.hex.push([0u8; 64]);
                        todo.push((v, next));
                        // A group is far smaller than 2^32 rows (chunks are bounded).
                        u32::try_from(next).unwrap_or(u32::MAX)
                    });
                    last = Some((v, slot));
                    slot
                }
            };
            slots.push(slot);
        }
        match cache.remote.clone() {
            Some(remote) => cache.fetch_remote(&*remote, &todo),
            None => self.hash_into(&todo, &mut cache.hex),
        }
        UInt32Array::new(slots.into(), numbers.nulls().cloned())
    }

    /// Write the hex pseudonym of each `(number, slot)` to `out[slot]`, [`LANES`] at a
    /// time. A value that is not a valid NHS number (never produced by `validate_array`)
    /// leaves its slot zeroed, as before.
    fn hash_into(&self, todo: &[(u64, usize)], out: &mut [[u8; 64]]) {
        let valid: Vec<(u64, usize)> = todo
            .iter()
            .copied()
            .filter(|&(v, _)| NhsNumber::from_u64(v).is_some())
            .collect();
        let mut lanes = [[0u8; 64]; LANES];
        let mut groups = valid.chunks_exact(LANES);
        for group in &mut groups {
            let messages: [[u8; 10]; LANES] = std::array::from_fn(|i| ascii_digits(group[i].0));
            self.kernel.hex_lanes(&messages, &mut lanes);
            for (&(_, slot), hex) in group.iter().zip(&lanes) {
                out[slot] = *hex;
            }
        }
        for &(v, slot) in groups.remainder() {
            self.kernel.hex(&ascii_digits(v), &mut out[slot]);
        }
    }
}

/// Pseudonyms computed so far, by NHS number: one row group's worth in the extract, so a
/// patient whose rows are spread over the group's chunks is hashed once. Holds the
/// pseudonyms (not the key); dropped with the row group.
#[derive(Default)]
pub struct PseudonymCache {
    slot: HashMap<u64, u32, BuildHasherDefault<NumberHasher>>,
    hex: Vec<[u8; 64]>,
    /// Where new numbers are pseudonymised when not here (`tre extract --scheduler`).
    remote: Option<std::sync::Arc<dyn PseudonymService>>,
    /// The first failure of `remote`: the row group must not be written.
    failure: Option<String>,
}

/// Computes pseudonyms outside this process: the cluster's trusted executors, which hold
/// the key (`crate::cluster`). Given distinct valid NHS numbers, their hex pseudonyms in
/// the same order. It never receives or returns key material; an error text names no
/// number.
pub trait PseudonymService: Send + Sync + std::fmt::Debug {
    /// The hex pseudonym of each number, in order.
    fn hex(&self, numbers: &[u64]) -> Result<Vec<[u8; 64]>, String>;
}

impl PseudonymCache {
    /// A cache whose new numbers are pseudonymised by `remote` instead of the local key.
    /// Check [`PseudonymCache::take_failure`] before using its values.
    pub fn remote(remote: std::sync::Arc<dyn PseudonymService>) -> Self {
        PseudonymCache {
            remote: Some(remote),
            ..PseudonymCache::default()
        }
    }

    /// The pseudonyms, indexed by slot (in order of first appearance).
    pub fn values(&self) -> &[[u8; 64]] {
        &self.hex
    }

    /// Why the remote service failed, if it did: the slots it left are zeroed, so
    /// nothing computed with this cache may be written.
    pub fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    /// Fill `todo`'s slots from the remote service; a failure (or a reply that is not one
    /// lowercase hex pseudonym per number) is kept for [`PseudonymCache::take_failure`].
    fn fetch_remote(&mut self, remote: &dyn PseudonymService, todo: &[(u64, usize)]) {
        if self.failure.is_some() {
            return;
        }
        let valid: Vec<(u64, usize)> = todo
            .iter()
            .copied()
            .filter(|&(v, _)| NhsNumber::from_u64(v).is_some())
            .collect();
        if valid.is_empty() {
            return;
        }
        let numbers: Vec<u64> = valid.iter().map(|&(v, _)| v).collect();
        match remote.hex(&numbers) {
            Ok(hex) if hex.len() == valid.len() && hex.iter().all(is_lower_hex) => {
                for (&(_, slot), h) in valid.iter().zip(hex) {
                    self.hex[slot] = h;
                }
            }
            Ok(hex) => {
                self.failure = Some(format!(
                    "the cluster returned {} pseudonyms for {} numbers, or one that is not 64 lowercase hex characters",
                    hex.len(),
                    valid.len()
                ))
            }
            Err(e) => self.failure = Some(e),
        }
    }
}

fn is_lower_hex(h: &[u8; 64]) -> bool {
    h.iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

impl std::fmt::Debug for PseudonymCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PseudonymCache({} numbers)", self.hex.len())
    }
}

/// Hashes NHS numbers for the map of a [`PseudonymCache`]: one
/// multiply, high bits folded down (numbers are not secret there and the map is private).
#[derive(Default)]
struct NumberHasher(u64);

impl std::hash::Hasher for NumberHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 ^ u64::from(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        let x = v.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 29);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nhs_number::parse;

    fn test_key() -> ProjectKey {
        let mut b = [0u8; 32];
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8;
        }
        ProjectKey::from_bytes(b)
    }

    #[test]
    fn design_test_vectors() {
        let p = test_key().pseudonymiser();
        assert_eq!(
            p.pseudonym(parse("943 476 5919").expect("valid")),
            "dd5c602eeb31d60c7c0d662c897231dda00e13cdf945b14cad185a4a7125826c"
        );
        assert_eq!(
            p.pseudonym(parse("9434765870").expect("valid")),
            "d35f0b68631da84ee4fc64a0d8efd922ee27d9f2c3eb9adf9726581991291473"
        );
        assert_eq!(test_key().fingerprint(), "ad3e1ee3fff41f02");
    }

    #[test]
    fn key_file_parsing() {
        let p = Path::new("k");
        let good = b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n";
        assert_eq!(
            ProjectKey::parse(good, p).expect("good").fingerprint(),
            "ad3e1ee3fff41f02"
        );
        assert!(matches!(
            ProjectKey::parse(&good[..62], p),
            Err(KeyError::Malformed { .. })
        ));
        let mut bad = good.to_vec();
        bad[10] = b'g';
        let e = ProjectKey::parse(&bad, p).expect_err("refused");
        assert!(e.to_string().contains("character 11"), "{e}");
        let zeros = [b'0'; 64];
        assert!(matches!(
            ProjectKey::parse(&zeros, p),
            Err(KeyError::Weak { .. })
        ));
    }

    #[test]
    fn errors_and_debug_never_show_key() {
        let k = test_key();
        assert!(!format!("{k:?}").contains("0001020304"));
        let mut bad = *b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        bad[63] = b'z';
        let e = ProjectKey::parse(&bad, Path::new("k")).expect_err("refused");
        assert!(!e.to_string().contains("0001020304"));
    }

    #[test]
    fn hex_array_matches_scalar_and_keeps_nulls() {
        let p = test_key().pseudonymiser();
        let a = UInt64Array::from(vec![
            Some(9434765919),
            None,
            Some(9434765919),
            Some(9434765870),
        ]);
        let out = p.hex_array(&a);
        assert_eq!(out.len(), 4);
        assert!(out.is_null(1));
        assert_eq!(
            out.value(0),
            p.pseudonym(parse("9434765919").expect("valid"))
        );
        assert_eq!(out.value(2), out.value(0));
        assert_eq!(
            out.value(3),
            p.pseudonym(parse("9434765870").expect("valid"))
        );
    }

    /// The old kernel: the `hmac` crate over the digits, then hex.
    fn reference_hex(key: &ProjectKey, n: NhsNumber) -> String {
        let mut mac = key.mac();
        mac.update(&n.ascii_digits());
        crate::digest::hex(&mac.finalize().into_bytes())
    }

    proptest::proptest! {
        #[test]
        fn hex_array_equals_the_hmac_crate(
            key in proptest::prelude::any::<[u8; 32]>(),
            picks in proptest::collection::vec(proptest::option::of(0usize..6), 0..40),
            seeds in proptest::collection::vec(9_000_000_000u64..10_000_000_000, 6),
        ) {
            let key = ProjectKey::from_bytes(key);
            let valid: Vec<NhsNumber> = seeds
                .iter()
                .map(|&s| (s..).find_map(NhsNumber::from_u64).expect("a valid number follows"))
                .collect();
            let a = UInt64Array::from(
                picks.iter().map(|p| p.map(|i| valid[i].get())).collect::<Vec<_>>(),
            );
            let out = key.pseudonymiser().hex_array(&a);
            proptest::prop_assert_eq!(out.len(), picks.len());
            for (i, p) in picks.iter().enumerate() {
                match p {
                    None => proptest::prop_assert!(out.is_null(i)),
                    Some(j) => proptest::prop_assert_eq!(out.value(i), reference_hex(&key, valid[*j])),
                }
            }
        }

        #[test]
        fn slots_index_a_shared_cache_in_first_appearance_order(
            key in proptest::prelude::any::<[u8; 32]>(),
            batches in proptest::collection::vec(
                proptest::collection::vec(proptest::option::of(0usize..8), 0..30), 1..4),
            seeds in proptest::collection::vec(9_000_000_000u64..10_000_000_000, 8),
        ) {
            let key = ProjectKey::from_bytes(key);
            let p = key.pseudonymiser();
            let valid: Vec<NhsNumber> = seeds
                .iter()
                .map(|&s| (s..).find_map(NhsNumber::from_u64).expect("a valid number follows"))
                .collect();
            let mut cache = PseudonymCache::default();
            let mut seen: Vec<u64> = Vec::new();
            for picks in &batches {
                let a = UInt64Array::from(
                    picks.iter().map(|p| p.map(|i| valid[i].get())).collect::<Vec<_>>(),
                );
                let slots = p.slots(&a, &mut cache);
                proptest::prop_assert_eq!(slots.len(), picks.len());
                for (i, pick) in picks.iter().enumerate() {
                    let Some(j) = pick else {
                        proptest::prop_assert!(slots.is_null(i));
                        continue;
                    };
                    let n = valid[*j].get();
                    if !seen.contains(&n) {
                        seen.push(n);
                    }
                    let slot = slots.value(i) as usize;
                    // Equal numbers share a slot, numbered in order of first appearance.
                    proptest::prop_assert_eq!(Some(slot), seen.iter().position(|&m| m == n));
                    let hex = std::str::from_utf8(&cache.values()[slot]).expect("ascii");
                    proptest::prop_assert_eq!(hex, reference_hex(&key, valid[*j]));
                }
            }
            proptest::prop_assert_eq!(cache.values().len(), seen.len());
        }
    }

    /// A stand-in for the cluster: the local kernel, or a failure, or a short reply.
    #[derive(Debug)]
    enum Fake {
        Good(ProjectKey),
        Fails,
        Short(ProjectKey),
    }

    impl PseudonymService for Fake {
        fn hex(&self, numbers: &[u64]) -> Result<Vec<[u8; 64]>, String> {
            let one = |k: &ProjectKey, v: u64| {
                let mut h = [0u8; 64];
                let n = NhsNumber::from_u64(v).expect("valid");
                h.copy_from_slice(k.pseudonymiser().pseudonym(n).as_bytes());
                h
            };
            match self {
                Fake::Good(k) => Ok(numbers.iter().map(|&v| one(k, v)).collect()),
                Fake::Fails => Err("the cluster job failed: executor lost".into()),
                Fake::Short(k) => Ok(numbers.iter().skip(1).map(|&v| one(k, v)).collect()),
            }
        }
    }

    #[test]
    fn remote_slots_equal_local_slots_and_failures_are_kept() {
        let numbers = UInt64Array::from(vec![
            Some(9434765919),
            None,
            Some(9434765870),
            Some(9434765919),
        ]);
        let p = test_key().pseudonymiser();
        let mut local = PseudonymCache::default();
        let local_slots = p.slots(&numbers, &mut local);
        let mut remote = PseudonymCache::remote(std::sync::Arc::new(Fake::Good(test_key())));
        let remote_slots = p.slots(&numbers, &mut remote);
        assert_eq!(local_slots, remote_slots);
        assert_eq!(local.values(), remote.values());
        assert!(remote.take_failure().is_none());
        for fake in [Fake::Fails, Fake::Short(test_key())] {
            let mut c = PseudonymCache::remote(std::sync::Arc::new(fake));
            let _ = p.slots(&numbers, &mut c);
            let why = c.take_failure().expect("a failure is kept");
            assert!(!why.contains("9434765"), "{why}");
        }
    }
}
