//! The free-text search's index: Bloom filters of the 4-byte grams of stored
//! rows, one per block of rows close in time (`auditline.search_blocks`).
//!
//! The search's `q` is a case-insensitive substring of `lower(endpoint)` or
//! `lower(metadata::text)`. If a row holds it, every 4-byte window of `q` is a
//! 4-byte window of one of those texts, so every one of its bits is set in the
//! Bloom filter of the row's block. A block that lacks one of them cannot hold
//! a match, and the search reads only the time ranges of the blocks that pass
//! (plus the rows of batches not yet indexed). Filters never miss; they let
//! through a few blocks that do not match, which the exact `strpos` drops.
//!
//! The rollup keeper builds the blocks from the very texts PostgreSQL compares
//! (it reads `lower(...)` back), in the transaction that takes the batches off
//! `auditline.rollup_pending`: at any snapshot a row is either in a pending
//! batch or covered by a block.
//!
//! Why not a trigram GIN index: it cost ~50 µs per inserted row here (words
//! in a GIN, ~15 µs), more than the writer's whole per-row budget; a block
//! filter costs the keeper ~1 µs per row and ~35 bytes of storage.

use chrono::{DateTime, TimeDelta, Utc};

/// Bytes per gram: queries shorter than this are not served by the index.
pub const GRAM: usize = 4;
/// Bytes of one filter: two blocks fit a PostgreSQL page, stored inline
/// (`STORAGE PLAIN`), so `get_bit` reads them without detoasting a copy.
pub const BLOOM_BYTES: usize = 3968;
const BLOOM_BITS: u64 = (BLOOM_BYTES * 8) as u64;
/// Bits set per gram: with 8 bits a gram, 2 probes give a false-positive
/// rate near 5% per gram (3 would give 3% at half again the keeper's cost).
const PROBES: u64 = 2;
/// A block closes once this many bits are set: the fill of ~4,000 distinct
/// grams at 8 bits each (1 - e^(-2/8) ≈ 22%).
const FULL_BITS: u32 = (BLOOM_BITS as u32) * 22 / 100;
/// A block closes at this many rows even if its filter is sparse, so that a
/// block that passes never costs much to read.
pub const MAX_ROWS: i32 = 1024;
/// And when its rows would span more than this (the table's CHECK agrees).
pub const MAX_SPAN: TimeDelta = TimeDelta::hours(1);
/// Grams of a query looked up: any subset still never misses.
const MAX_QUERY_GRAMS: usize = 24;

fn positions(gram: &[u8]) -> impl Iterator<Item = u64> {
    let x = u64::from(u32::from_le_bytes([gram[0], gram[1], gram[2], gram[3]]));
    // Two independent multiplicative hashes, combined by double hashing.
    let h1 = x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
    let h2 = x.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) >> 17 | 1;
    (0..PROBES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % BLOOM_BITS)
}

/// The filter bits a search for `q` (already lowercased) needs, as
/// PostgreSQL's `get_bit` numbers them; `None` when `q` is too short.
pub fn query_bits(q: &str) -> Option<Vec<i64>> {
    let q = q.as_bytes();
    if q.len() < GRAM {
        return None;
    }
    let mut grams: Vec<&[u8]> = q.windows(GRAM).collect();
    grams.sort_unstable();
    grams.dedup();
    grams.truncate(MAX_QUERY_GRAMS);
    let mut bits: Vec<i64> = grams
        .into_iter()
        .flat_map(positions)
        .map(|p| p as i64)
        .collect();
    bits.sort_unstable();
    bits.dedup();
    Some(bits)
}

/// One block: the time range of its rows and their filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    pub rows: i32,
    pub bits: Vec<u8>,
    set: u32,
}

impl Block {
    fn new(at: DateTime<Utc>) -> Self {
        Self {
            first_at: at,
            last_at: at,
            rows: 0,
            bits: vec![0; BLOOM_BYTES],
            set: 0,
        }
    }

    fn add_text(&mut self, text: &[u8]) {
        for gram in text.windows(GRAM) {
            for p in positions(gram) {
                let byte = &mut self.bits[(p / 8) as usize];
                let before = *byte;
                *byte |= 1u8 << (p % 8);
                // Counted without a branch (it would mispredict half the time).
                self.set += u32::from(before != *byte);
            }
        }
    }

    /// Whether the filter has every bit of [`query_bits`] (the search asks
    /// PostgreSQL's `get_bit`; the tests ask this, numbering bits alike).
    #[cfg(test)]
    fn may_contain(&self, bits: &[i64]) -> bool {
        bits.iter()
            .all(|&p| self.bits[(p / 8) as usize] & (1u8 << (p % 8)) != 0)
    }

    fn full(&self, next_at: DateTime<Utc>) -> bool {
        self.set >= FULL_BITS || self.rows >= MAX_ROWS || next_at - self.first_at > MAX_SPAN
    }
}

/// Builds blocks from rows handed over in time order.
#[derive(Debug, Default)]
pub struct BlockBuilder {
    done: Vec<Block>,
    open: Option<Block>,
}

impl BlockBuilder {
    /// Adds one row: its time and the lowercased texts the search compares.
    pub fn add(&mut self, at: DateTime<Utc>, texts: &[&str]) {
        let block = match self.open.take() {
            Some(block) if !block.full(at) => block,
            Some(full) => {
                self.done.push(full);
                Block::new(at)
            }
            None => Block::new(at),
        };
        let block = self.open.insert(block);
        // Rows arrive sorted, but keep the range honest if one is not.
        block.first_at = block.first_at.min(at);
        block.last_at = block.last_at.max(at);
        block.rows += 1;
        for text in texts {
            block.add_text(text.as_bytes());
        }
    }

    pub fn finish(mut self) -> Vec<Block> {
        self.done.extend(self.open.take());
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000 + s, 0).expect("time")
    }

    #[test]
    fn every_substring_of_an_indexed_text_passes_its_block() {
        let texts: Vec<String> = (0..3000)
            .map(|i| {
                format!(
                    "/files/{i} {{\"request_id\": \"{:032x}\", \"ü\": \"Ünïcode {i}\"}}",
                    i * 7919
                )
            })
            .collect();
        let mut builder = BlockBuilder::default();
        for (i, t) in texts.iter().enumerate() {
            builder.add(at(i as i64), &[&t.to_lowercase()]);
        }
        let blocks = builder.finish();
        assert!(blocks.len() > 1, "3,000 rows fill more than one block");
        assert_eq!(blocks.iter().map(|b| b.rows).sum::<i32>(), 3000);
        for (i, t) in texts.iter().enumerate() {
            let t = t.to_lowercase();
            let block = blocks
                .iter()
                .find(|b| b.first_at <= at(i as i64) && at(i as i64) <= b.last_at)
                .expect("a block holds every row");
            for start in (0..t.len()).filter(|&s| t.is_char_boundary(s)).step_by(5) {
                let end = (start + 4 + i % 9).min(t.len());
                let Some(q) = t.get(start..end) else { continue };
                if let Some(bits) = query_bits(q) {
                    assert!(block.may_contain(&bits), "{q:?} of row {i}");
                }
            }
        }
    }

    #[test]
    fn absent_terms_are_mostly_filtered_out() {
        let mut builder = BlockBuilder::default();
        for i in 0..20_000i64 {
            let text = format!(
                "/files/{} {{\"request_id\": \"{:032x}\"}}",
                i % 5000,
                i * 104_729
            );
            builder.add(at(i), &[&text]);
        }
        let blocks = builder.finish();
        let bits = query_bits("/files/777777").expect("long enough");
        let passing = blocks.iter().filter(|b| b.may_contain(&bits)).count();
        assert!(
            passing * 20 < blocks.len(),
            "{passing} of {} blocks pass for a term no row holds",
            blocks.len()
        );
        assert!(query_bits("abc").is_none());
    }

    #[test]
    fn blocks_close_at_their_span_and_row_limits() {
        let mut builder = BlockBuilder::default();
        for i in 0..(MAX_ROWS as i64 + 10) {
            builder.add(at(i), &["same"]);
        }
        builder.add(at(MAX_ROWS as i64 + 10 + 7200), &["later"]);
        let blocks = builder.finish();
        assert_eq!(
            blocks.iter().map(|b| b.rows).collect::<Vec<_>>(),
            vec![MAX_ROWS, 10, 1]
        );
        assert!(blocks.iter().all(|b| b.last_at - b.first_at <= MAX_SPAN));
    }
}
