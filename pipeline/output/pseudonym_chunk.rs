//! The pseudonym column chunk of one row group, encoded by hand from dictionary slots.
//!
//! The extract hashes each patient once per row group ([`crate::pseudonym::PseudonymCache`])
//! and hands this module every row as a *slot*: an index into the group's distinct
//! pseudonyms, in order of first appearance. That is already a Parquet dictionary, so
//! this module writes it as one (a PLAIN dictionary page, then RLE_DICTIONARY data pages
//! of bit-packed or run-length indices) or, where a dictionary does not pay, as PLAIN
//! pages of the hex values, with the column metadata and offset index the file writer
//! splices in. It saves Parquet's own writer from hashing and comparing every 64-byte
//! pseudonym against the group's dictionary again.
//! Danger: it must never write a value that is not in the dictionary it is given, and its
//! bytes must depend only on the slots and the dictionary, never on how the rows were cut
//! into batches or which thread encoded them.

use std::sync::Arc;

use arrow::array::{Array, UInt32Array};
use bytes::Bytes;
use parquet::basic::{Compression, Encoding, EncodingMask, PageType, ZstdLevel};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::{ColumnChunkMetaData, PageEncodingStats};
use parquet::file::page_index::offset_index::{OffsetIndexMetaData, PageLocation};
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;

/// Rows per data page (about 1 MiB of plain hex; Parquet's own writer cuts at 20,000).
pub(super) const PAGE_ROWS: usize = 16 * 1024;

/// Values in one bit-packed run: 63 groups of 8, so its header is one byte, as Parquet's
/// own encoder writes them (some readers expect no longer runs).
const MAX_PACKED_RUN: usize = 63 * 8;

/// A run of equal slots at least this long (after completing the bit-packed groups before
/// it) is written as one run-length entry.
const MIN_REPEAT_RUN: usize = 8;

use super::PSEUDONYM_ZSTD_LEVEL as ZSTD_LEVEL;

/// The bytes of a pseudonym: 64 lowercase hex characters.
pub type Hex = [u8; 64];

/// Most entries in one dictionary page (about 35 MB of hex). A row group whose distinct
/// pseudonyms outgrow it keeps the dictionary it has and writes the rest of the chunk
/// plain, as Parquet's own writer falls back: readers need not hold a page of any size.
pub(super) const MAX_DICTIONARY_ENTRIES: usize = 1 << 19;

/// How the chunk stores its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// One dictionary page of the group's distinct pseudonyms, then indices.
    Dictionary,
    /// Every row's hex in full.
    Plain,
}

/// One row group's pseudonym column, built page by page.
pub(super) struct PseudonymChunk {
    descr: ColumnDescPtr,
    /// The layout of the pages still to come.
    layout: Layout,
    max_entries: usize,
    /// Entries the dictionary page must hold: every slot written in dictionary pages
    /// (and in `pending`, while the layout is [`Layout::Dictionary`]) is below it.
    entries: usize,
    /// Slots of the page being filled.
    pending: Vec<u32>,
    /// Data pages written so far (offsets relative to their start).
    pages: TrackedWrite<Vec<u8>>,
    locations: Vec<PageLocation>,
    dictionary_pages: i32,
    plain_pages: i32,
    /// Uncompressed bytes of the data pages, headers included.
    uncompressed: i64,
    rows: u64,
}

impl std::fmt::Debug for PseudonymChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PseudonymChunk({:?}, {} rows)", self.layout, self.rows)
    }
}

fn bug(message: impl Into<String>) -> ParquetError {
    ParquetError::General(message.into())
}

impl PseudonymChunk {
    /// Start an empty chunk for the column `descr` (a required BYTE_ARRAY column) whose
    /// dictionary, if it has one, holds at most `max_entries` pseudonyms.
    pub(super) fn new(descr: ColumnDescPtr, layout: Layout, max_entries: usize) -> Result<Self> {
        if descr.max_def_level() != 0 || descr.max_rep_level() != 0 {
            return Err(bug(format!(
                "pseudonym column {} must be required and flat",
                descr.path()
            )));
        }
        Ok(PseudonymChunk {
            descr,
            layout,
            max_entries,
            entries: 0,
            pending: Vec::with_capacity(PAGE_ROWS),
            pages: TrackedWrite::new(Vec::new()),
            locations: Vec::new(),
            dictionary_pages: 0,
            plain_pages: 0,
            uncompressed: 0,
            rows: 0,
        })
    }

    /// Append rows: each a slot into `dictionary`, the group's distinct pseudonyms so far.
    pub(super) fn write(&mut self, slots: &UInt32Array, dictionary: &[Hex]) -> Result<()> {
        if slots.null_count() > 0 {
            return Err(bug("a pseudonym slot is missing"));
        }
        if self.layout == Layout::Dictionary && dictionary.len() > self.max_entries {
            // The rows so far use the dictionary as it was; the rest are written plain.
            if !self.pending.is_empty() {
                self.flush_page(dictionary)?;
            }
            self.layout = Layout::Plain;
        }
        if self.layout == Layout::Dictionary {
            self.entries = dictionary.len();
        }
        let mut values = slots.values().iter().copied();
        loop {
            let room = PAGE_ROWS - self.pending.len();
            let before = self.pending.len();
            self.pending.extend(values.by_ref().take(room));
            if self.pending[before..]
                .iter()
                .any(|&s| s as usize >= dictionary.len())
            {
                return Err(bug("a pseudonym slot is past the row group's dictionary"));
            }
            if self.pending.len() < PAGE_ROWS {
                return Ok(());
            }
            self.flush_page(dictionary)?;
        }
    }

    /// Encode, compress and store the pending page in the current layout.
    fn flush_page(&mut self, dictionary: &[Hex]) -> Result<()> {
        let (encoding, buf) = match self.layout {
            Layout::Dictionary => {
                self.dictionary_pages += 1;
                (Encoding::RLE_DICTIONARY, encode_indices(&self.pending))
            }
            Layout::Plain => {
                self.plain_pages += 1;
                (
                    Encoding::PLAIN,
                    // Slots already checked against `dictionary`.
                    plain(self.pending.iter().map(|&s| &dictionary[s as usize])),
                )
            }
        };
        let page = Page::DataPage {
            buf: compress(&buf)?.into(),
            num_values: self.pending.len() as u32,
            encoding,
            def_level_encoding: Encoding::RLE,
            rep_level_encoding: Encoding::RLE,
            statistics: None,
        };
        let spec = SerializedPageWriter::new(&mut self.pages)
            .write_page(CompressedPage::new(page, buf.len()))?;
        self.locations.push(PageLocation {
            offset: spec.offset as i64,
            compressed_page_size: spec.compressed_size as i32,
            first_row_index: self.rows as i64,
        });
        self.uncompressed += spec.uncompressed_size as i64;
        self.rows += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Close the chunk: its bytes (dictionary page first) and what the file writer needs
    /// to splice them in, offsets relative to the returned bytes.
    pub(super) fn finish(mut self, dictionary: &[Hex]) -> Result<(Bytes, ColumnCloseResult)> {
        if !self.pending.is_empty() || self.locations.is_empty() {
            self.flush_page(dictionary)?;
        }
        let mut out = TrackedWrite::new(Vec::new());
        let mut stats = Vec::new();
        let mut encodings = vec![Encoding::PLAIN, Encoding::RLE];
        let mut uncompressed = self.uncompressed;
        if self.dictionary_pages > 0 {
            let plain = plain(dictionary[..self.entries.min(dictionary.len())].iter());
            let page = Page::DictionaryPage {
                buf: compress(&plain)?.into(),
                num_values: self.entries as u32,
                encoding: Encoding::PLAIN,
                is_sorted: false,
            };
            let spec = SerializedPageWriter::new(&mut out)
                .write_page(CompressedPage::new(page, plain.len()))?;
            uncompressed += spec.uncompressed_size as i64;
            encodings.push(Encoding::RLE_DICTIONARY);
            stats.push(page_stats(PageType::DICTIONARY_PAGE, Encoding::PLAIN, 1));
            stats.push(page_stats(
                PageType::DATA_PAGE,
                Encoding::RLE_DICTIONARY,
                self.dictionary_pages,
            ));
        }
        if self.plain_pages > 0 {
            stats.push(page_stats(
                PageType::DATA_PAGE,
                Encoding::PLAIN,
                self.plain_pages,
            ));
        }
        let data_start = out.bytes_written() as i64;
        let mut bytes = out.into_inner().map_err(|e| bug(e.to_string()))?;
        bytes.extend_from_slice(&self.pages.into_inner().map_err(|e| bug(e.to_string()))?);
        for l in &mut self.locations {
            l.offset += data_start;
        }
        let metadata = ColumnChunkMetaData::builder(Arc::clone(&self.descr))
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL)?))
            .set_encodings_mask(EncodingMask::new_from_encodings(encodings.iter()))
            .set_page_encoding_stats(stats)
            .set_total_compressed_size(bytes.len() as i64)
            .set_total_uncompressed_size(uncompressed)
            .set_num_values(self.rows as i64)
            .set_data_page_offset(data_start)
            .set_dictionary_page_offset((self.dictionary_pages > 0).then_some(0))
            .build()?;
        let close = ColumnCloseResult {
            bytes_written: bytes.len() as u64,
            rows_written: self.rows,
            metadata,
            bloom_filter: None,
            column_index: None,
            offset_index: Some(OffsetIndexMetaData {
                page_locations: self.locations,
                unencoded_byte_array_data_bytes: None,
            }),
        };
        Ok((Bytes::from(bytes), close))
    }
}

fn page_stats(page_type: PageType, encoding: Encoding, count: i32) -> PageEncodingStats {
    PageEncodingStats {
        page_type,
        encoding,
        count,
    }
}

fn compress(buf: &[u8]) -> Result<Vec<u8>> {
    zstd::bulk::compress(buf, ZSTD_LEVEL).map_err(|e| bug(format!("zstd: {e}")))
}

/// PLAIN byte arrays: a 4-byte little-endian length before each value.
fn plain<'a>(values: impl ExactSizeIterator<Item = &'a Hex>) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 68);
    for v in values {
        out.extend_from_slice(&64u32.to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// An RLE_DICTIONARY page body: the bit width, then the indices in Parquet's
/// RLE / bit-packing hybrid. Runs of at least [`MIN_REPEAT_RUN`] equal indices (one
/// patient's rows together) become run-length entries; the rest are bit-packed in
/// groups of eight, the last group padded with zeros (the page header says how many
/// values are real).
pub(super) fn encode_indices(slots: &[u32]) -> Vec<u8> {
    let max = slots.iter().copied().max().unwrap_or(0);
    let bits = (u32::BITS - max.leading_zeros()).max(1) as usize;
    let mut out = Vec::with_capacity(1 + slots.len() * bits / 8 + 16);
    out.push(bits as u8);
    let mut literal_start = 0;
    let mut i = 0;
    while i < slots.len() {
        let mut j = i + 1;
        while j < slots.len() && slots[j] == slots[i] {
            j += 1;
        }
        // Bit-packed runs hold whole groups of eight: the run completes the last one.
        let fill = (8 - (i - literal_start) % 8) % 8;
        if j - i >= fill + MIN_REPEAT_RUN {
            bit_pack(&slots[literal_start..i + fill], bits, &mut out);
            uleb128(((j - i - fill) as u64) << 1, &mut out);
            out.extend_from_slice(&slots[i].to_le_bytes()[..bits.div_ceil(8)]);
            literal_start = j;
        }
        i = j;
    }
    bit_pack(&slots[literal_start..], bits, &mut out);
    out
}

/// Bit-packed runs of `values` (a multiple of eight long, except at the end of a page).
fn bit_pack(values: &[u32], bits: usize, out: &mut Vec<u8>) {
    for run in values.chunks(MAX_PACKED_RUN) {
        let groups = run.len().div_ceil(8);
        uleb128(((groups as u64) << 1) | 1, out);
        for group in run.chunks(8) {
            let mut acc = 0u64;
            let mut filled = 0;
            for k in 0..8 {
                acc |= u64::from(group.get(k).copied().unwrap_or(0)) << filled;
                filled += bits;
                while filled >= 8 {
                    out.push(acc as u8);
                    acc >>= 8;
                    filled -= 8;
                }
            }
        }
    }
}

fn uleb128(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decode a page body with an independent, plain reading of the hybrid format.
    fn decode(body: &[u8], n: usize) -> Vec<u32> {
        let bits = body[0] as usize;
        let mut pos = 1;
        let mut out = Vec::new();
        let read_uleb = |pos: &mut usize| {
            let (mut v, mut shift) = (0u64, 0);
            loop {
                let b = body[*pos];
                *pos += 1;
                v |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return v;
                }
                shift += 7;
            }
        };
        while out.len() < n {
            let header = read_uleb(&mut pos);
            if header & 1 == 0 {
                let width = bits.div_ceil(8);
                let mut v = [0u8; 4];
                v[..width].copy_from_slice(&body[pos..pos + width]);
                pos += width;
                out.extend(std::iter::repeat_n(
                    u32::from_le_bytes(v),
                    (header >> 1) as usize,
                ));
            } else {
                let count = (header >> 1) as usize * 8;
                for k in 0..count {
                    let mut v = 0u32;
                    for b in 0..bits {
                        let bit = k * bits + b;
                        v |= u32::from((body[pos + bit / 8] >> (bit % 8)) & 1) << b;
                    }
                    out.push(v);
                }
                pos += count * bits / 8;
            }
        }
        assert_eq!(pos, body.len(), "trailing bytes");
        out.truncate(n);
        out
    }

    #[test]
    fn runs_and_literals_round_trip() {
        let mut slots: Vec<u32> = (0..13).collect();
        slots.extend(std::iter::repeat_n(5, 30));
        slots.extend([1, 2, 3]);
        slots.extend(std::iter::repeat_n(7, 9));
        let body = encode_indices(&slots);
        assert_eq!(decode(&body, slots.len()), slots);
        // The two long runs became run-length entries: far smaller than packing 55 values.
        assert!(body.len() < 1 + 55 * 4 / 8, "{} bytes", body.len());
    }

    #[test]
    fn one_distinct_value_still_has_a_bit() {
        let body = encode_indices(&[0; 20]);
        assert_eq!(body[0], 1);
        assert_eq!(decode(&body, 20), vec![0; 20]);
    }

    proptest! {
        #[test]
        fn any_slots_round_trip(
            runs in prop::collection::vec((0u32..(1 << 22), 1usize..20), 0..400),
            shift in 0u32..10,
        ) {
            let slots: Vec<u32> = runs
                .iter()
                .flat_map(|&(v, n)| std::iter::repeat_n(v >> shift, n))
                .collect();
            prop_assert_eq!(decode(&encode_indices(&slots), slots.len()), slots);
        }
    }
}
