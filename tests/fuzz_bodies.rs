//! Every fuzz target's body (`memvirt::trace::fuzz`, shared with `fuzz/`) run by the test suite
//! for a bounded number of inputs: random bytes, and sound traces of each format with a few
//! bytes overwritten, so that each promise (no panic; damage refused or harmless; conversions
//! exact) is checked on every `cargo test`, not only where a nightly toolchain runs `cargo fuzz`.

mod tracegen;

use std::sync::OnceLock;

use memvirt::trace::{fuzz, InputFormat, Record};
use proptest::prelude::*;

/// Sound inputs of every format, made once.
struct Sound {
    lackey: Vec<u8>,
    champsim: Vec<u8>,
    cloudsuite: Vec<u8>,
    gzip_lackey: Vec<u8>,
    compact: (Vec<u8>, Vec<Record>),
}

fn sound() -> &'static Sound {
    static SOUND: OnceLock<Sound> = OnceLock::new();
    SOUND.get_or_init(|| {
        let prog = tracegen::program(7, 200);
        let lackey = tracegen::lackey(&prog, None).into_bytes();
        Sound {
            gzip_lackey: tracegen::gzip(&lackey),
            lackey,
            champsim: tracegen::champsim(&prog),
            cloudsuite: tracegen::cloudsuite(&prog),
            compact: fuzz::sound_compact(),
        }
    })
}

/// `bytes` with each `(position, byte)` of `hits` written (positions modulo the length).
fn damaged(bytes: &[u8], hits: &[(prop::sample::Index, u8)]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for (at, byte) in hits {
        if !out.is_empty() {
            let i = at.index(out.len());
            out[i] = *byte;
        }
    }
    out
}

fn hits() -> impl Strategy<Value = Vec<(prop::sample::Index, u8)>> {
    prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn readers_never_panic_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        for format in [InputFormat::Lackey, InputFormat::Champsim, InputFormat::Cloudsuite] {
            fuzz::reader(format, &data);
        }
        fuzz::compact(&data);
        fuzz::compressed(&data);
    }

    #[test]
    fn readers_never_panic_on_damaged_sound_traces(h in hits()) {
        let s = sound();
        fuzz::reader(InputFormat::Lackey, &damaged(&s.lackey, &h));
        fuzz::reader(InputFormat::Champsim, &damaged(&s.champsim, &h));
        fuzz::reader(InputFormat::Cloudsuite, &damaged(&s.cloudsuite, &h));
        fuzz::compressed(&damaged(&s.gzip_lackey, &h));
        fuzz::compressed(&damaged(&s.champsim, &h));
        fuzz::compact(&damaged(&s.compact.0, &h));
    }

    /// Every overwrite of the checksummed format is refused or changes nothing.
    #[test]
    fn compact_damage_is_refused_or_harmless(data in prop::collection::vec(any::<u8>(), 5..40)) {
        let (good, records) = &sound().compact;
        fuzz::compact_damage(good, records, &data);
    }
}

#[test]
fn the_bodies_accept_sound_input() {
    let s = sound();
    // Sound input goes all the way through (the conversion is checked to read back exactly).
    fuzz::compressed(&s.gzip_lackey);
    fuzz::compressed(&s.champsim);
    fuzz::compact(&s.compact.0);
    fuzz::compact_damage(&s.compact.0, &s.compact.1, &[]);
}

/// The body's read-back check can fail: an undamaged file whose records are not the ones
/// given is reported.
#[test]
#[should_panic(expected = "assertion `left == right` failed")]
fn compact_damage_checks_what_an_accepted_file_reads_back() {
    let (good, records) = &sound().compact;
    fuzz::compact_damage(good, &records[1..], &[]);
}
