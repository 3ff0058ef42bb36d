//! Which guest frames hold the page tables of the current root: found by walking the tree when
//! the root changes, and kept up to date from the stores the kernel makes into those frames
//! (a stored pointer links a table in, an overwritten one unlinks it). It lets a replay count
//! the kernel's page-table stores exactly (`SystemReport::table_stores`), without guessing from
//! addresses: a freed table page that comes back as data is no longer counted.

use std::collections::HashMap;

use crate::addr::{Gfn, Hpa, Level};
use crate::machine::Platform;
use crate::paging::{Decoded, Format};

/// Entries of one table page (4 KiB of 8-byte entries; true of every guest format).
const ENTRIES: u64 = 512;

/// The table pages reachable from the current root.
pub(super) struct TableFrames {
    format: Format,
    /// One bit per guest frame: the quick test made for every store.
    member: Vec<u64>,
    /// Each member's level (0: leaf table) and how many entries point to it.
    frames: HashMap<u64, Frame>,
    /// The root's frame.
    root: Option<u64>,
}

#[derive(Clone, Copy)]
struct Frame {
    level: u8,
    refs: u32,
}

impl TableFrames {
    /// No tables, for a guest-physical space of `bytes`.
    pub(super) fn new(format: Format, bytes: u64) -> Self {
        let words = usize::try_from((bytes >> 12).div_ceil(64)).unwrap_or(0);
        TableFrames { format, member: vec![0; words], frames: HashMap::new(), root: None }
    }

    /// The tables of the root at `root` (a frame number), replacing the previous root's.
    pub(super) fn set_root(&mut self, p: &Platform, root: u64) {
        if self.root == Some(root) {
            return;
        }
        self.root = Some(root);
        for &gfn in self.frames.keys() {
            if let Some(w) = self.member.get_mut(usize::try_from(gfn / 64).unwrap_or(usize::MAX)) {
                *w = 0;
            }
        }
        self.frames.clear();
        self.link(p, root, self.format.levels - 1);
    }

    /// Whether guest frame `gfn` is one of the current tables.
    #[inline]
    pub(super) fn contains(&self, gfn: u64) -> bool {
        usize::try_from(gfn / 64)
            .ok()
            .and_then(|i| self.member.get(i))
            .is_some_and(|w| w >> (gfn % 64) & 1 == 1)
    }

    /// The word at `gpa`, one of the tables' entries, changed from `old` to `new` (already in
    /// the image).
    pub(super) fn stored(&mut self, p: &Platform, gpa: u64, old: u64, new: u64) {
        let Some(&Frame { level, .. }) = self.frames.get(&(gpa >> 12)) else { return };
        if let Some(child) = self.child(old, level) {
            self.unlink(p, child);
        }
        if let Some(child) = self.child(new, level) {
            self.link(p, child, level - 1);
        }
    }

    /// The next table an entry of a table at `level` points to, if it points to one.
    fn child(&self, entry: u64, level: u8) -> Option<u64> {
        if level == 0 {
            return None;
        }
        match self.format.decode(entry, Level::ALL[usize::from(level)]) {
            Ok(Decoded::Table { next, .. }) => Some(next >> 12),
            _ => None,
        }
    }

    /// One more entry points to `gfn`, a table at `level`: a new member brings its own tables.
    fn link(&mut self, p: &Platform, gfn: u64, level: u8) {
        let mut pending = vec![(gfn, level)];
        while let Some((gfn, level)) = pending.pop() {
            if let Some(f) = self.frames.get_mut(&gfn) {
                f.refs += 1;
                continue;
            }
            let Some(word) = self.member.get_mut(usize::try_from(gfn / 64).unwrap_or(usize::MAX))
            else {
                continue; // Outside guest memory: the walker faults on it, nothing to track.
            };
            *word |= 1 << (gfn % 64);
            self.frames.insert(gfn, Frame { level, refs: 1 });
            for i in 0..ENTRIES {
                if let Some(child) = self.child(peek(p, (gfn << 12) | (i * 8)), level) {
                    pending.push((child, level - 1));
                }
            }
        }
    }

    /// One entry fewer points to `gfn`: at none, it and what only it reached leave the set.
    fn unlink(&mut self, p: &Platform, gfn: u64) {
        let mut pending = vec![gfn];
        while let Some(gfn) = pending.pop() {
            let Some(f) = self.frames.get_mut(&gfn) else { continue };
            f.refs -= 1;
            if f.refs > 0 {
                continue;
            }
            let level = f.level;
            self.frames.remove(&gfn);
            if let Some(w) = self.member.get_mut(usize::try_from(gfn / 64).unwrap_or(usize::MAX)) {
                *w &= !(1 << (gfn % 64));
            }
            for i in 0..ENTRIES {
                if let Some(child) = self.child(peek(p, (gfn << 12) | (i * 8)), level) {
                    pending.push(child);
                }
            }
        }
    }
}

/// The guest-physical word at `gpa` as the image holds it (0 where nothing was stored), read
/// without backing the frame.
pub(super) fn peek(p: &Platform, gpa: u64) -> u64 {
    p.guest_mem
        .lookup(Gfn::new(gpa >> 12))
        .map_or(0, |hfn| p.host.read_u64(Hpa::new(hfn.addr().as_u64() | gpa & 0xff8)))
}
