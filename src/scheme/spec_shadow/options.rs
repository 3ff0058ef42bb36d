//! The parameters of speculative inverted shadow paging. Ahn, Jin and Huh publish the mechanism
//! but (as far as the project's sources reach: only the abstract) not the inverted table's
//! geometry, its hash, the verification timing or the squash cost, so every default here is an
//! assumption, named as such, and settable with `--set scheme.KEY=VALUE`.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// How the inverted table's set is chosen from (ASID, guest virtual page number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InvertedHash {
    /// `(vpn XOR scramble(tag)) mod sets`: the primary hash of PowerPC's hashed page table XORs
    /// the segment's VSID into the page index, and Linux scrambles VSIDs (a multiplication by a
    /// large prime) so that address spaces with the same layout do not collide; the address-space
    /// tag plays the VSID's part, scrambled by SplitMix64's finalizer (assumption).
    Xor,
    /// `(vpn / ways XOR scramble(tag)) mod sets`: `ways` consecutive pages of an address space
    /// share a set, so one probe line holds a whole cluster of neighbouring pages, as in a
    /// clustered page table (Talluri, Hill and Khalidi, ASPLOS 1995), instead of one page a line.
    Clustered,
    /// `vpn mod sets`: the ASID takes no part, so every address space's same page shares a set.
    LowBits,
    /// A SplitMix64 finalizer over `asid << 48 | vpn`, then `mod sets`: close to uniform.
    Mix,
}

/// What identifies an address space in the inverted table's tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpaceTag {
    /// The guest's ASID/PCID, as the table's (ASID, page) key says: a guest that recycles
    /// ASIDs (x86 Linux keeps 6 PCIDs per CPU) finds its old entries under another tag.
    Asid,
    /// 16 bits folded from the frame number of the guest's root table (its CR3/satp base), which
    /// stays with the address space whatever ASID it runs under. Two roots that fold alike alias;
    /// the verifying walk turns an aliased hit into a mis-speculation, never a wrong commit.
    Root,
}

/// Every parameter of `spec-shadow`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecShadowOptions {
    /// Entries of the per-VM inverted shadow table (16 bytes each: a tag word and a translation
    /// word). Default 262,144 (4 MiB): one entry per 4 KiB frame of the built-in profiles' 1 GiB
    /// guest, as a classic inverted page table has one entry per physical frame (assumption).
    pub entries: u64,
    /// Entries per set. Default 4: a set fills one 64-byte line, so a probe is one memory
    /// reference, the "single memory reference" of the paper's common case (assumption). A
    /// probe reads one line per 64 bytes of its set.
    pub ways: u64,
    /// How (address-space tag, page) picks the set. Default `clustered` (assumption): with 4
    /// ways, the four pages of an aligned group share one line, so a probe has the spatial
    /// locality of a radix leaf table (4 pages a line against 8 entries a line) instead of one
    /// line per page; `xor` takes 11–20 % more cycles on `stream`, `random` and `pointer-chase`
    /// (README).
    pub hash: InvertedHash,
    /// What tags an address space. Default `asid` (the (ASID, page) key of the design).
    pub tag: SpaceTag,
    /// Whether the verifying 2D walk's latency is added to a miss whose speculation was right.
    /// Default `false`: the speculative translation lets the access proceed and the walk runs
    /// off the critical path, as the paper describes. A miss with no usable speculation, or a
    /// mis-speculation, always waits for the walk.
    pub expose_verification: bool,
    /// Cycles a mis-speculation costs on top of the walk: the squash and replay of the work done
    /// with the wrong translation. Default 20, a branch-misprediction-class pipeline flush on a
    /// Skylake-class core (assumption).
    pub squash_penalty: u64,
}

impl Default for SpecShadowOptions {
    fn default() -> Self {
        SpecShadowOptions {
            entries: 1 << 18,
            ways: 4,
            hash: InvertedHash::Clustered,
            tag: SpaceTag::Asid,
            expose_verification: false,
            squash_penalty: 20,
        }
    }
}

/// The most entries the table may have: 2^24 (256 MiB of table).
const MAX_ENTRIES: u64 = 1 << 24;
/// The most ways a set may have.
const MAX_WAYS: u64 = 64;

impl SpecShadowOptions {
    /// Applies `scheme.KEY=VALUE` settings (without the prefix) and validates the result.
    pub fn with_sets(mut self, sets: &[(String, String)]) -> Result<Self, ConfigError> {
        self = crate::config::set_all(self, sets)?;
        self.validate()?;
        Ok(self)
    }

    /// Refuses geometries that mean nothing.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        if !(1..=MAX_WAYS).contains(&self.ways) {
            return bad(format!("scheme.ways = {} must be between 1 and {MAX_WAYS}", self.ways));
        }
        if !(self.ways..=MAX_ENTRIES).contains(&self.entries) || self.entries % self.ways != 0 {
            return bad(format!(
                "scheme.entries = {} must be a multiple of scheme.ways ({}) between {} and \
                 {MAX_ENTRIES}",
                self.entries, self.ways, self.ways
            ));
        }
        if self.squash_penalty > crate::cost::MAX_COST {
            return bad(format!(
                "scheme.squash_penalty = {} is more than the largest cost, {} cycles (2^32)",
                self.squash_penalty,
                crate::cost::MAX_COST
            ));
        }
        Ok(())
    }

    /// Sets of the inverted table.
    pub fn sets(&self) -> u64 {
        self.entries / self.ways
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(k: &str, v: &str) -> Vec<(String, String)> {
        vec![(k.to_owned(), v.to_owned())]
    }

    #[test]
    fn defaults_are_valid_and_settings_apply_by_name() {
        let d = SpecShadowOptions::default();
        d.validate().unwrap();
        assert_eq!(d.sets(), 65_536);
        let o = d.with_sets(&set("hash", "low-bits")).unwrap();
        assert_eq!(o.hash, InvertedHash::LowBits);
        let o = d.with_sets(&set("expose_verification", "true")).unwrap();
        assert!(o.expose_verification);
    }

    #[test]
    fn bad_geometries_and_unknown_keys_are_refused() {
        let d = SpecShadowOptions::default();
        assert!(d.with_sets(&set("ways", "0")).is_err());
        assert!(d.with_sets(&set("entries", "6")).is_err(), "not a multiple of 4 ways");
        assert!(d.with_sets(&set("entries", "2")).is_err(), "fewer entries than ways");
        assert!(d.with_sets(&set("hash", "crc")).is_err());
        let unknown = d.with_sets(&set("root_buffer", "8")).unwrap_err();
        assert!(unknown.to_string().contains("squash_penalty"), "{unknown}");
    }
}
