//! The per-VM inverted shadow table of speculative inverted shadow paging: a set-associative hash
//! table in host memory mapping (ASID, guest virtual page) to a host frame.
//!
//! Each entry is 16 bytes, two words with real bits:
//! - the tag: bit 63 valid, bits 62:47 the address-space tag (the ASID, or 16 bits folded from
//!   the guest root's frame number: [`SpaceTag`]), bits 46:0 the guest virtual page number (the
//!   address's bits below the format's width, so kernel and user pages stay distinct);
//! - the translation: a level-0 leaf of the guest's own first-stage format (host frame,
//!   permissions combined over the guest's levels, global, A set, D as the guest entry had it),
//!   as a shadow leaf is.
//!
//! A set is `ways` consecutive entries; a probe reads the whole set, one memory reference per
//! 64-byte line. Replacement within a set is FIFO, its pointer kept beside the table (a few bits
//! per set in the filling hardware; an assumption, as the paper's replacement is unpublished).

pub use super::options::SpaceTag;
use super::options::{InvertedHash, SpecShadowOptions};
use crate::addr::{u64_to_usize, Gva, Hfn, Hpa, Level, PageSize};
use crate::machine::GuestRoot;
use crate::mem::{HostMemory, MemError};
use crate::paging::walk::{Dim, WalkRef};
use crate::paging::{Decoded, Format, LeafAttrs, Perms};

/// Bytes of one entry: a tag word and a translation word.
pub const ENTRY_BYTES: u64 = 16;
/// Bytes a probe reads per memory reference.
const LINE_BYTES: u64 = 64;
const TAG_VALID: u64 = 1 << 63;
const SPACE_SHIFT: u32 = 47;
const VPN_MASK: u64 = (1 << SPACE_SHIFT) - 1;

/// What the table is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// The address-space tag (16 bits).
    pub space: u16,
    /// The guest virtual page number, truncated to the format's width.
    pub vpn: u64,
}

/// A 4 KiB translation held by the table: what a probe hands out speculatively.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Speculation {
    /// The host frame.
    pub hfn: Hfn,
    /// Guest permissions combined over the levels.
    pub perms: Perms,
    /// Whether the guest mapping is global.
    pub global: bool,
    /// Whether the guest entry was dirty when the translation was stored.
    pub dirty: bool,
}

/// An inverted shadow table in host memory.
#[derive(Debug)]
pub struct InvertedTable {
    base: Hpa,
    sets: u64,
    ways: u64,
    hash: InvertedHash,
    tag: SpaceTag,
    format: Format,
    vpn_bits: u32,
    /// FIFO replacement pointer of each set.
    next: Vec<u8>,
}

impl InvertedTable {
    /// Allocates an empty table of `opts`' geometry whose translations use `format` (the guest's
    /// first-stage format).
    pub fn alloc(
        host: &mut HostMemory,
        opts: &SpecShadowOptions,
        format: Format,
    ) -> Result<Self, MemError> {
        let frames = (opts.entries * ENTRY_BYTES).div_ceil(PageSize::Size4K.bytes());
        let base = host.alloc_contiguous(frames, 1)?.addr();
        Ok(InvertedTable {
            base,
            sets: opts.sets(),
            ways: opts.ways,
            hash: opts.hash,
            tag: opts.tag,
            format,
            vpn_bits: (format.input_bits() - PageSize::Size4K.shift()).min(SPACE_SHIFT),
            next: vec![0; u64_to_usize(opts.sets())],
        })
    }

    /// The table's size in bytes.
    pub fn bytes(&self) -> u64 {
        self.sets * self.ways * ENTRY_BYTES
    }

    /// The key of `gva` in the address space `root`.
    #[inline]
    pub fn key(&self, root: &GuestRoot, gva: Gva) -> Key {
        let space = match self.tag {
            SpaceTag::Asid => root.asid.0,
            SpaceTag::Root => fold16(root.table.root().as_u64() >> PageSize::Size4K.shift()),
        };
        self.key_in(space, gva)
    }

    /// The key of `gva` in the address space tagged `space`.
    #[inline]
    pub fn key_in(&self, space: u16, gva: Gva) -> Key {
        let vpn = (gva.as_u64() >> PageSize::Size4K.shift()) & ((1 << self.vpn_bits) - 1);
        Key { space, vpn }
    }

    /// The set `key` lives in.
    #[inline]
    pub fn set_of(&self, key: Key) -> u64 {
        let space = u64::from(key.space);
        let h = match self.hash {
            InvertedHash::Xor => key.vpn ^ mix(space),
            InvertedHash::Clustered => (key.vpn / self.ways) ^ mix(space),
            InvertedHash::LowBits => key.vpn,
            InvertedHash::Mix => mix(space << 48 | key.vpn),
        };
        h % self.sets
    }

    fn entry_addr(&self, set: u64, way: u64) -> Hpa {
        self.base.wrapping_add((set * self.ways + way) * ENTRY_BYTES)
    }

    /// The memory references a probe of `set` makes: one read per 64-byte line of the set.
    pub fn probe_refs(&self, set: u64) -> impl Iterator<Item = WalkRef> + '_ {
        let first = self.entry_addr(set, 0);
        let lines = (self.ways * ENTRY_BYTES).div_ceil(LINE_BYTES);
        (0..lines).map(move |i| WalkRef {
            hpa: first.wrapping_add(i * LINE_BYTES),
            level: Level::L0,
            dim: Dim::Guest,
            write: false,
        })
    }

    fn tag(key: Key) -> u64 {
        TAG_VALID | u64::from(key.space) << SPACE_SHIFT | (key.vpn & VPN_MASK)
    }

    /// The way of `key`'s set holding `key`, with its translation (the functional content of a
    /// probe; the references are [`InvertedTable::probe_refs`]).
    pub fn lookup(&self, host: &HostMemory, key: Key) -> Option<(u64, Speculation)> {
        let set = self.set_of(key);
        let tag = Self::tag(key);
        (0..self.ways).find_map(|way| {
            let addr = self.entry_addr(set, way);
            if host.read_u64(addr) != tag {
                return None;
            }
            let raw = host.read_u64(addr.wrapping_add(8));
            match self.format.decode(raw, Level::L0) {
                Ok(Decoded::Leaf { base, attrs }) => Some((
                    way,
                    Speculation {
                        hfn: Hpa::new(base).page(),
                        perms: attrs.perms,
                        global: attrs.global,
                        dirty: attrs.dirty,
                    },
                )),
                _ => None,
            }
        })
    }

    /// Stores `spec` for `key`: over `key`'s own way if it has one, else in a free way, else over
    /// the set's FIFO victim.
    pub fn store(&mut self, host: &mut HostMemory, key: Key, spec: Speculation) {
        let set = self.set_of(key);
        let tag = Self::tag(key);
        let (mut own, mut free) = (None, None);
        for way in 0..self.ways {
            let t = host.read_u64(self.entry_addr(set, way));
            if t == tag {
                own = Some(way);
                break;
            }
            if free.is_none() && t & TAG_VALID == 0 {
                free = Some(way);
            }
        }
        let way = match own.or(free) {
            Some(way) => way,
            None => {
                let slot = &mut self.next[u64_to_usize(set)];
                let victim = u64::from(*slot);
                *slot = u8::try_from((victim + 1) % self.ways).unwrap_or(0);
                victim
            }
        };
        let attrs =
            LeafAttrs { perms: spec.perms, global: spec.global, accessed: true, dirty: spec.dirty };
        let addr = self.entry_addr(set, way);
        host.write_u64(addr, tag);
        host.write_u64(
            addr.wrapping_add(8),
            self.format.encode_leaf(spec.hfn.addr().as_u64(), Level::L0, attrs),
        );
    }

    /// Empties `key`'s way, if it has one.
    pub fn invalidate(&self, host: &mut HostMemory, key: Key) {
        if let Some((way, _)) = self.lookup(host, key) {
            host.write_u64(self.entry_addr(self.set_of(key), way), 0);
        }
    }
}

/// 16 bits of `x`: the XOR of its four 16-bit pieces.
#[inline]
fn fold16(x: u64) -> u16 {
    let folded = x ^ (x >> 16) ^ (x >> 32) ^ (x >> 48);
    u16::try_from(folded & 0xffff).unwrap_or(0)
}

/// SplitMix64's finalizer (the same mixing `src/rng.rs` uses).
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(opts: SpecShadowOptions) -> (HostMemory, InvertedTable) {
        let mut host = HostMemory::new(1 << 14);
        let t = InvertedTable::alloc(&mut host, &opts, Format::SV39).unwrap();
        (host, t)
    }

    fn spec(hfn: u64) -> Speculation {
        Speculation {
            hfn: Hfn::new(hfn),
            perms: Perms::R | Perms::W | Perms::U,
            global: false,
            dirty: true,
        }
    }

    #[test]
    fn a_stored_translation_is_found_under_its_own_key_only() {
        let (mut host, mut t) = table(SpecShadowOptions::default());
        let key = t.key_in(3, Gva::new(0x1234_5000));
        t.store(&mut host, key, spec(77));
        assert_eq!(t.lookup(&host, key).map(|(_, s)| s), Some(spec(77)));
        assert_eq!(t.lookup(&host, Key { space: 4, ..key }), None);
        assert_eq!(t.lookup(&host, t.key_in(3, Gva::new(0x1234_6000))), None);
        t.store(&mut host, key, spec(78));
        assert_eq!(t.lookup(&host, key).map(|(_, s)| s), Some(spec(78)), "replaced in place");
        t.invalidate(&mut host, key);
        assert_eq!(t.lookup(&host, key), None);
    }

    #[test]
    fn the_fifth_page_of_a_four_way_set_evicts_the_first() {
        let opts = SpecShadowOptions {
            entries: 8,
            ways: 4,
            hash: InvertedHash::Xor,
            ..SpecShadowOptions::default()
        };
        let (mut host, mut t) = table(opts);
        // Two sets: even pages of ASID 0 all land in set 0 under the XOR hash.
        let keys: Vec<Key> = (0..5).map(|i| t.key_in(0, Gva::new(i * 2 * 4096))).collect();
        assert!(keys.iter().all(|&k| t.set_of(k) == 0));
        for (i, &k) in keys.iter().enumerate() {
            t.store(&mut host, k, spec(i as u64 + 1));
        }
        assert_eq!(t.lookup(&host, keys[0]), None, "FIFO victim");
        assert!(keys[1..].iter().all(|&k| t.lookup(&host, k).is_some()));
    }

    #[test]
    fn a_root_tag_follows_the_address_space_whatever_its_asid() {
        use crate::addr::{Asid, Gpa};
        use crate::paging::PageTable;
        let root = |asid, frame: u64| GuestRoot {
            table: PageTable::new(Gpa::new(frame * 4096), Format::SV39),
            asid: Asid(asid),
        };
        let va = Gva::new(0x4000_0000);
        let (_, by_asid) = table(SpecShadowOptions::default());
        assert_ne!(by_asid.key(&root(1, 7), va), by_asid.key(&root(2, 7), va));
        let opts = SpecShadowOptions { tag: SpaceTag::Root, ..SpecShadowOptions::default() };
        let (_, by_root) = table(opts);
        assert_eq!(by_root.key(&root(1, 7), va), by_root.key(&root(2, 7), va));
        assert_ne!(by_root.key(&root(1, 7), va), by_root.key(&root(1, 8), va));
    }

    #[test]
    fn the_clustered_hash_puts_four_neighbouring_pages_in_one_line() {
        let (_, t) = table(SpecShadowOptions::default());
        let set = |page: u64| t.set_of(t.key_in(1, Gva::new(page * 4096)));
        assert_eq!([set(8), set(9), set(10), set(11)], [set(8); 4]);
        assert_ne!(set(12), set(8));
        assert_ne!(t.set_of(t.key_in(2, Gva::new(8 * 4096))), set(8), "another address space");
    }

    #[test]
    fn a_probe_reads_one_line_per_64_bytes_of_its_set() {
        let (_, t) = table(SpecShadowOptions::default());
        assert_eq!(t.probe_refs(5).count(), 1);
        assert_eq!(t.probe_refs(5).next().map(|r| r.hpa.as_u64() % 64), Some(0));
        let wide = SpecShadowOptions { ways: 8, ..SpecShadowOptions::default() };
        let (_, t) = table(wide);
        assert_eq!(t.probe_refs(5).count(), 2);
        assert_eq!(t.bytes(), 4 << 20);
    }

    #[test]
    fn kernel_and_user_pages_keep_distinct_keys() {
        let (_, t) = table(SpecShadowOptions::default());
        let user = t.key_in(1, Gva::new(0x0000_0000_4000_0000));
        let kernel = t.key_in(1, Gva::new(0xffff_ffc0_4000_0000));
        assert_ne!(user, kernel);
        assert!(kernel.vpn < 1 << 27, "Sv39: 27 bits of page number");
    }
}
