//! Paging formats as data: one [`Format`] value describes a radix table (levels, index widths,
//! entry family); the walker in [`super::walk`](mod@super::walk) serves all of them. The x4
//! G-stage rule (a 16 KiB root with two extra index bits) is the `root_extra_bits` field, never a
//! branch in the walker.

use crate::addr::{bits, Level, PageSize, PAGE_SHIFT};

/// The entry encoding a format uses. Each family has its own module with the bit layout and the
/// specification's rule ladder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// RISC-V Sv39/Sv48/Sv57 and their x4 G-stage forms (priv spec, "Supervisor-Level ISA").
    RiscV,
    /// x86-64 4- and 5-level paging (Intel SDM Vol. 3A ch. 4).
    X86,
    /// Intel EPT (SDM Vol. 3C §29.3).
    Ept,
}

/// Which translation stage a table implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Input is a virtual address: guest (VS-stage), native, shadow or host-process tables.
    First,
    /// Input is a guest physical address: G-stage (RISC-V) or EPT (x86).
    Nested,
}

/// A radix page-table format, described by data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Format {
    /// Name as the specification spells it ("Sv39", "Sv48x4", "x86-64 4-level", "EPT 4-level").
    pub name: &'static str,
    /// Entry encoding.
    pub family: Family,
    /// Translation stage.
    pub stage: Stage,
    /// Number of levels walked with 4 KiB pages.
    pub levels: u8,
    /// Extra index bits at the root (2 for the x4 G-stage formats: a 16 KiB, 2048-entry root).
    pub root_extra_bits: u8,
    /// The highest level at which a leaf (superpage) is legal.
    pub largest_leaf: Level,
}

/// Bytes per page-table entry in every supported format.
pub const PTE_BYTES: u64 = 8;
/// Index bits per level (512 entries of 8 bytes fill a 4 KiB table).
pub const INDEX_BITS: u32 = 9;

impl Format {
    /// RISC-V Sv39: 39-bit VA, 3 levels, 4K/2M/1G pages.
    pub const SV39: Format = Format::riscv("Sv39", Stage::First, 3, 0);
    /// RISC-V Sv48: 48-bit VA, 4 levels, up to 512 GiB pages.
    pub const SV48: Format = Format::riscv("Sv48", Stage::First, 4, 0);
    /// RISC-V Sv57: 57-bit VA, 5 levels, up to 256 TiB pages.
    pub const SV57: Format = Format::riscv("Sv57", Stage::First, 5, 0);
    /// RISC-V Sv39x4 G-stage: 41-bit GPA, 16 KiB root (hypervisor spec §"Guest Physical Address
    /// Translation").
    pub const SV39X4: Format = Format::riscv("Sv39x4", Stage::Nested, 3, 2);
    /// RISC-V Sv48x4 G-stage: 50-bit GPA.
    pub const SV48X4: Format = Format::riscv("Sv48x4", Stage::Nested, 4, 2);
    /// RISC-V Sv57x4 G-stage: 59-bit GPA.
    pub const SV57X4: Format = Format::riscv("Sv57x4", Stage::Nested, 5, 2);
    /// x86-64 4-level paging: 48-bit linear address, 4K/2M/1G pages.
    pub const X86_64_4LEVEL: Format = Format {
        name: "x86-64 4-level",
        family: Family::X86,
        stage: Stage::First,
        levels: 4,
        root_extra_bits: 0,
        largest_leaf: Level::L2,
    };
    /// x86-64 5-level paging (CR4.LA57): 57-bit linear address.
    pub const X86_64_5LEVEL: Format =
        Format { name: "x86-64 5-level", levels: 5, ..Self::X86_64_4LEVEL };
    /// Intel EPT with a 4-level walk (EPTP page-walk length 3).
    pub const EPT_4LEVEL: Format = Format {
        name: "EPT 4-level",
        family: Family::Ept,
        stage: Stage::Nested,
        levels: 4,
        root_extra_bits: 0,
        largest_leaf: Level::L2,
    };
    /// Intel EPT with a 5-level walk (EPTP page-walk length 4).
    pub const EPT_5LEVEL: Format = Format { name: "EPT 5-level", levels: 5, ..Self::EPT_4LEVEL };

    /// Every built-in format.
    pub const ALL: [Format; 10] = [
        Self::SV39,
        Self::SV48,
        Self::SV57,
        Self::SV39X4,
        Self::SV48X4,
        Self::SV57X4,
        Self::X86_64_4LEVEL,
        Self::X86_64_5LEVEL,
        Self::EPT_4LEVEL,
        Self::EPT_5LEVEL,
    ];

    const fn riscv(name: &'static str, stage: Stage, levels: u8, root_extra_bits: u8) -> Format {
        Format {
            name,
            family: Family::RiscV,
            stage,
            levels,
            root_extra_bits,
            // Priv spec: any level may be a leaf.
            largest_leaf: match Level::from_index(levels as u32 - 1) {
                Some(l) => l,
                None => Level::L0,
            },
        }
    }

    /// Looks a format up by its name, ignoring case and the separators users type differently.
    pub fn by_name(name: &str) -> Option<Format> {
        let norm = |s: &str| {
            s.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase()
        };
        let wanted = norm(name);
        Self::ALL.into_iter().find(|f| norm(f.name) == wanted)
    }

    /// The root table's level.
    #[inline]
    pub const fn root_level(&self) -> Level {
        match Level::from_index(self.levels as u32 - 1) {
            Some(l) => l,
            None => Level::L0,
        }
    }

    /// Bytes of the root table: 4 KiB, or 16 KiB for the x4 formats.
    #[inline]
    pub const fn root_bytes(&self) -> u64 {
        (1 << PAGE_SHIFT) << self.root_extra_bits
    }

    /// Width of the input address in bits (39/48/57, 41/50/59 for x4).
    #[inline]
    pub const fn input_bits(&self) -> u32 {
        PAGE_SHIFT + INDEX_BITS * self.levels as u32 + self.root_extra_bits as u32
    }

    /// Whether `input` is a legal input address: first-stage addresses must be sign-extended
    /// (RISC-V "canonical", x86 "canonical"); G-stage/EPT addresses must be zero-extended.
    #[inline]
    pub const fn input_is_valid(&self, input: u64) -> bool {
        let width = self.input_bits();
        match self.stage {
            Stage::First => {
                let top = input >> (width - 1);
                top == 0 || top == (u64::MAX >> (width - 1))
            }
            Stage::Nested => input >> width == 0,
        }
    }

    /// The index into the table at `level` for `input`: 9 bits, 11 at an x4 root.
    #[inline]
    pub const fn index(&self, input: u64, level: Level) -> u64 {
        let width = if level.index() + 1 == self.levels as u32 {
            INDEX_BITS + self.root_extra_bits as u32
        } else {
            INDEX_BITS
        };
        // `bits(input, shift + width - 1, shift)` without its branch: a width of 64 or more
        // keeps every bit above the shift.
        (input >> level.shift()) & (u64::MAX >> 64u32.saturating_sub(width))
    }

    /// The part of `input` that selects the entry at `level` and every level above it; the
    /// page-walk caches are tagged with it.
    #[inline]
    pub const fn prefix(&self, input: u64, level: Level) -> u64 {
        bits(input, self.input_bits() - 1, level.shift())
    }

    /// Whether a leaf at `level` is legal in this format.
    #[inline]
    pub const fn leaf_allowed(&self, level: Level) -> bool {
        level.index() <= self.largest_leaf.index()
    }

    /// The largest page size this format can map.
    #[inline]
    pub const fn largest_page(&self) -> PageSize {
        PageSize::at_level(self.largest_leaf)
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_widths_match_the_specifications() {
        let widths: Vec<(&str, u32)> =
            Format::ALL.iter().map(|f| (f.name, f.input_bits())).collect();
        assert_eq!(
            widths,
            [
                ("Sv39", 39),
                ("Sv48", 48),
                ("Sv57", 57),
                ("Sv39x4", 41),
                ("Sv48x4", 50),
                ("Sv57x4", 59),
                ("x86-64 4-level", 48),
                ("x86-64 5-level", 57),
                ("EPT 4-level", 48),
                ("EPT 5-level", 57),
            ]
        );
    }

    #[test]
    fn x4_root_takes_eleven_index_bits_and_16k() {
        let f = Format::SV39X4;
        assert_eq!(f.root_bytes(), 16 * 1024);
        // GPA[40:30] is VPN[2]: the top index can reach 2047.
        assert_eq!(f.index((1 << 41) - 1, Level::L2), 2047);
        assert_eq!(f.index((1 << 41) - 1, Level::L1), 511);
        assert_eq!(Format::SV39.index((1 << 39) - 1, Level::L2), 511);
    }

    #[test]
    fn index_matches_the_bit_field_at_every_level_and_root_width() {
        // A flat table's root can be 64 or more bits wide: it keeps every bit above the shift.
        let wide = |extra| Format { levels: 1, root_extra_bits: extra, ..Format::SV39X4 };
        let formats = Format::ALL.into_iter().chain([wide(50), wide(52), wide(55), wide(60)]);
        for f in formats {
            for level in Level::ALL.into_iter().filter(|l| l.index() < u32::from(f.levels)) {
                let root = level.index() + 1 == u32::from(f.levels);
                let width = INDEX_BITS + if root { u32::from(f.root_extra_bits) } else { 0 };
                let hi = (level.shift() + width - 1).min(63);
                for input in [u64::MAX, 0x0123_4567_89ab_cdef, 1 << 63, 0] {
                    assert_eq!(
                        f.index(input, level),
                        bits(input, hi, level.shift()),
                        "{f} {level:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn first_stage_inputs_must_be_sign_extended_and_nested_zero_extended() {
        let sv39 = Format::SV39;
        assert!(sv39.input_is_valid(0x0000_003f_ffff_f000));
        assert!(sv39.input_is_valid(0xffff_ffc0_0000_0000));
        assert!(!sv39.input_is_valid(0x0000_0040_0000_0000));
        let x4 = Format::SV39X4;
        assert!(x4.input_is_valid((1 << 41) - 1));
        assert!(!x4.input_is_valid(1 << 41));
        assert!(!x4.input_is_valid(u64::MAX));
    }

    #[test]
    fn formats_are_found_by_loose_name() {
        assert_eq!(Format::by_name("sv48x4"), Some(Format::SV48X4));
        assert_eq!(Format::by_name("EPT-5level"), Some(Format::EPT_5LEVEL));
        assert_eq!(Format::by_name("x86_64_4level"), Some(Format::X86_64_4LEVEL));
        assert_eq!(Format::by_name("sv32"), None);
    }
}
