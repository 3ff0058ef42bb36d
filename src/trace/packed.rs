//! A stream's records packed for replay: one 8-byte word and one gap byte per record instead of
//! a 16-byte [`Record`], so that a kept window of a trace takes 9 bytes a record, and a replay's
//! fast path reads a word a record.
//!
//! A *plain* record (a load, store or fetch within one page, its address below 2^57, which holds
//! every user half memvirt models, its gap below 256) is its address with its kind in bits above
//! it ([`FETCH`], [`STORE`]), and its gap is its byte in the gaps. Any other record (a modify,
//! one that runs into a further page, a larger address or gap) is *odd*: its word is [`ODD`]
//! and [`NEVER_USER`] with its index into a side vector holding it whole, and its gap byte is 0.
//! An odd word's address is no user page, so a replay that looks it up in the TLB's hit memo as
//! if it were plain finds nothing and replays it the usual way.

use super::{Kind, Record, PAGE_BYTES};
use crate::paging::{Access, AccessKind};

/// The address bits of a plain record's word.
pub const ADDR_MASK: u64 = (1 << 57) - 1;
/// A plain record's word bit: an instruction fetch (neither this nor [`STORE`]: a load).
pub const FETCH: u64 = 1 << 57;
/// An odd record's word bit; the bits below [`NEVER_USER`] are its index into the odd records.
pub const ODD: u64 = 1 << 62;
/// A plain record's word bit: a store (the sign bit, the cheapest to test).
pub const STORE: u64 = 1 << 63;
/// An address bit set in every odd record's word, so that its address is no user page of any
/// format (a user half ends at 2^56 at most, and no kernel address is this far below 2^64):
/// a replay may look an odd word's address up in the TLB, and it misses.
pub const NEVER_USER: u64 = 1 << 56;

/// Records packed for replay (see the module's doc).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packed {
    words: Vec<u64>,
    gaps: Vec<u8>,
    odd: Vec<Record>,
}

/// The user access a plain record's `word` makes.
#[inline(always)]
pub fn plain_access(word: u64) -> Access {
    if word & STORE != 0 {
        Access::USER_STORE
    } else if word & FETCH != 0 {
        Access::USER_FETCH
    } else {
        Access::USER_LOAD
    }
}

/// A plain record's kind bits, by [`Kind`] encoding; a modify's ([`ODD`]) marks it odd.
const KIND_BITS: [u64; 4] = [0, STORE, ODD, FETCH];

/// `r`'s word if it is plain, else one with [`ODD`] set.
#[inline]
fn plain_word(r: &Record) -> u64 {
    let kind = KIND_BITS[usize::from(r.kind as u8 & 3)];
    let within_page = (r.addr % PAGE_BYTES) + u64::from(r.size.max(1)) <= PAGE_BYTES;
    let plain = r.addr <= ADDR_MASK && r.gap <= u32::from(u8::MAX) && within_page;
    if plain {
        r.addr | kind
    } else {
        ODD
    }
}

impl Packed {
    /// Room for `records` plain records.
    pub fn with_capacity(records: usize) -> Packed {
        Packed {
            words: Vec::with_capacity(records),
            gaps: Vec::with_capacity(records),
            odd: Vec::new(),
        }
    }

    /// Appends `records`.
    pub fn extend_from(&mut self, records: &[Record]) {
        let first = self.words.len();
        let odd = &mut self.odd;
        self.words.extend(records.iter().map(|r| {
            let word = plain_word(r);
            if word & ODD == 0 {
                return word;
            }
            odd.push(*r);
            ODD | NEVER_USER | (odd.len() - 1) as u64
        }));
        let words = self.words.get(first..).unwrap_or_default();
        self.gaps.extend(records.iter().zip(words).map(|(r, &word)| {
            // A plain record's gap fits (`plain_word`).
            if word & ODD == 0 {
                u8::try_from(r.gap).unwrap_or(u8::MAX)
            } else {
                0
            }
        }));
    }

    /// Forgets every record, keeping the memory.
    pub fn clear(&mut self) {
        self.words.clear();
        self.gaps.clear();
        self.odd.clear();
    }

    /// The records held.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// One word per record.
    #[inline]
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// The instructions of the records `from..to` that are plain (an odd record's gap is in
    /// [`Packed::record`]).
    #[inline]
    pub fn plain_instructions(&self, from: usize, to: usize) -> u64 {
        self.gaps.get(from..to).map_or(0, byte_sum)
    }

    /// Record `i` as a replay sees it: an odd record whole; a plain record with size 1, since
    /// its size is not kept (it ends in the page it starts in, so only its first byte matters).
    /// `None` past the end.
    pub fn record(&self, i: usize) -> Option<Record> {
        let word = *self.words.get(i)?;
        if word & ODD != 0 {
            return self.odd.get(usize::try_from(word & (NEVER_USER - 1)).ok()?).copied();
        }
        let kind = match plain_access(word).kind {
            AccessKind::Load => Kind::Load,
            AccessKind::Store => Kind::Store,
            AccessKind::Fetch => Kind::Fetch,
        };
        let gap = u32::from(*self.gaps.get(i)?);
        Some(Record { addr: word & ADDR_MASK, gap, size: 1, kind })
    }

    /// The memory its records take.
    pub fn bytes(&self) -> u64 {
        (self.words.len() * PACKED_RECORD_BYTES + self.odd.len() * std::mem::size_of::<Record>())
            as u64
    }
}

/// The sum of `bytes`, eight at a time: a replay adds up the gaps of every record it replayed
/// at once, and a byte at a time would cost it a few instructions a record.
#[inline(never)]
fn byte_sum(bytes: &[u8]) -> u64 {
    // Each 64-bit word's bytes are added in pairs into four 16-bit lanes; 128 words at most
    // fill a lane (128 × 2 × 255 = 65,280) before the lanes are added up.
    const LANES: u64 = 0x00ff_00ff_00ff_00ff;
    let mut words = bytes.chunks_exact(8);
    let mut total = 0;
    loop {
        let mut lanes = 0u64;
        let mut n = 0;
        for chunk in words.by_ref().take(128) {
            let w = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            lanes += (w & LANES) + ((w >> 8) & LANES);
            n += 1;
        }
        // Four lanes of up to 65,280 each: added in pairs into 32-bit lanes, then those two.
        let pairs = (lanes & 0x0000_ffff_0000_ffff) + ((lanes >> 16) & 0x0000_ffff_0000_ffff);
        total += (pairs & 0xffff_ffff) + (pairs >> 32);
        if n < 128 {
            break;
        }
    }
    total + words.remainder().iter().map(|&b| u64::from(b)).sum::<u64>()
}

/// Bytes a plain record takes packed: its word and its gap.
pub const PACKED_RECORD_BYTES: usize = std::mem::size_of::<u64>() + 1;

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(addr: u64, gap: u32, size: u16, kind: Kind) -> Record {
        Record { addr, gap, size, kind }
    }

    #[test]
    fn plain_and_odd_records_come_back_as_replay_sees_them() {
        let records = [
            rec(0x1000, 3, 8, Kind::Load),
            rec(0x2ff8, 0, 8, Kind::Store),
            rec(0x3ffc, 1, 8, Kind::Load),    // runs into the next page
            rec(0x4000, 2, 4, Kind::Modify),  // a modify
            rec(0x5000, 256, 4, Kind::Fetch), // a gap above a byte
            rec(1 << 57, 0, 4, Kind::Load),   // an address above 57 bits
            rec(0x6000, 255, 0, Kind::Fetch), // size 0 counts as 1 byte
        ];
        let mut p = Packed::default();
        p.extend_from(&records);
        assert_eq!(p.len(), 7);
        let odd: Vec<bool> = p.words().iter().map(|w| w & ODD != 0).collect();
        assert_eq!(odd, [false, false, true, true, true, true, false]);
        for (i, r) in records.iter().enumerate() {
            let back = p.record(i).expect("in range");
            if odd[i] {
                assert_eq!(back, *r);
            } else {
                assert_eq!((back.addr, back.gap, back.kind, back.size), (r.addr, r.gap, r.kind, 1));
            }
        }
        assert_eq!(p.record(7), None);
        // Only the plain records' gaps: 3 + 0 + 255.
        assert_eq!(p.plain_instructions(0, 7), 258);
        assert_eq!(p.plain_instructions(1, 3), 0);
        assert_eq!(p.bytes(), 7 * 9 + 4 * 16);
        p.clear();
        assert!(p.is_empty());
    }

    #[test]
    fn byte_sums_add_every_byte() {
        // Lengths around the 8-byte words and the 128-word blocks, all bytes at their largest.
        for n in [0, 1, 7, 8, 9, 1023, 1024, 1025, 3000] {
            let bytes = vec![u8::MAX; n];
            assert_eq!(byte_sum(&bytes), 255 * n as u64, "{n} bytes");
        }
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256).to_le_bytes()[0]).collect();
        assert_eq!(byte_sum(&bytes), bytes.iter().map(|&b| u64::from(b)).sum::<u64>());
    }
}
