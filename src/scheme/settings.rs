//! `--set scheme.KEY=VALUE`: which scheme takes which setting.
//!
//! The shadow presets (`tsp`, `tsp-unsync`, `ssp`, `lsp`, `rvirt`, …) share the keys of
//! [`ShadowOptions`]; `nested`, `snp`, `spec-shadow`, `softmmu` and the HSPT schemes have their
//! own; the others take none. `host_page` is a key of `nested`, `snp` and every shadow preset. A setting applies to every scheme whose options have its key and is ignored by the
//! others, so that one `compare` can move a shadow preset and `spec-shadow` at once. Before any
//! run, [`check_scheme_sets`] refuses a key that no selected scheme has (listing the keys they do
//! have) and a value any of them rejects.

use serde::Serialize;

use super::nested::NestedSettings;
use super::snp::SnpOptions;
use super::{HsptOptions, SchemeKind, ShadowOptions, SoftmmuOptions, SpecShadowOptions};
use crate::config::{self, ConfigError};

/// `KEY=VALUE` settings, prefix stripped.
type Sets = [(String, String)];
/// A `with_sets` of an options type: applies settings and validates the result.
type Apply<T> = fn(T, &Sets) -> Result<T, ConfigError>;
/// A check of settings against one scheme's options.
type Check = Box<dyn Fn(&Sets) -> Result<(), ConfigError>>;

/// One scheme's options, type-erased: their keys, their defaults as `KEY=VALUE` text, and a
/// check of settings against them.
struct Options {
    keys: Vec<String>,
    defaults: Vec<String>,
    check: Check,
}

impl Options {
    fn of<T: Serialize + Clone + 'static>(defaults: T, apply: Apply<T>) -> Self {
        let text = match toml::Value::try_from(&defaults) {
            Ok(toml::Value::Table(t)) => t.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            _ => Vec::new(),
        };
        Options {
            keys: config::keys(&defaults),
            defaults: text,
            check: Box::new(move |sets| apply(defaults.clone(), sets).map(drop)),
        }
    }
}

impl SchemeKind {
    /// The scheme's options, if it has any: the one place a scheme's options are named here.
    fn options(self) -> Option<Options> {
        if let Some(o) = self.shadow_options() {
            return Some(Options::of(o, ShadowOptions::with_sets));
        }
        match self {
            SchemeKind::Nested => {
                Some(Options::of(NestedSettings::default(), NestedSettings::with_sets))
            }
            SchemeKind::Snp => Some(Options::of(SnpOptions::default(), SnpOptions::with_sets)),
            SchemeKind::SpecShadow => {
                Some(Options::of(SpecShadowOptions::default(), SpecShadowOptions::with_sets))
            }
            SchemeKind::Softmmu => {
                Some(Options::of(SoftmmuOptions::default(), SoftmmuOptions::with_sets))
            }
            SchemeKind::HsptShared | SchemeKind::HsptPrefill | SchemeKind::HsptPrivate => {
                Some(Options::of(HsptOptions::default(), HsptOptions::with_sets))
            }
            _ => None,
        }
    }

    /// The keys `--set scheme.KEY=VALUE` may name for this scheme (none for most schemes).
    pub fn option_keys(self) -> Vec<String> {
        self.options().map(|o| o.keys).unwrap_or_default()
    }

    /// This scheme's options at their defaults as `KEY=VALUE` text, for `memvirt list`.
    pub fn option_defaults(self) -> Vec<String> {
        self.options().map(|o| o.defaults).unwrap_or_default()
    }

    /// The settings among `sets` that name one of this scheme's options, in order. A key that
    /// is an option of no scheme at all is an error listing every scheme option.
    pub fn own_sets(self, sets: &[(String, String)]) -> Result<Vec<(String, String)>, ConfigError> {
        if let Some((key, _)) = sets.iter().find(|(k, _)| !known(SchemeKind::ALL, k)) {
            return Err(unknown(key, SchemeKind::ALL));
        }
        let mine = self.option_keys();
        Ok(sets.iter().filter(|(k, _)| mine.contains(k)).cloned().collect())
    }

    /// Applies this scheme's share of `sets` to its default options and validates the result.
    pub fn check_own_sets(self, sets: &[(String, String)]) -> Result<(), ConfigError> {
        let own = self.own_sets(sets)?;
        self.options().map_or(Ok(()), |o| (o.check)(&own))
    }
}

fn known(schemes: &[SchemeKind], key: &str) -> bool {
    schemes.iter().any(|s| s.option_keys().iter().any(|k| k == key))
}

fn unknown(key: &str, schemes: &[SchemeKind]) -> ConfigError {
    let mut valid: Vec<String> = schemes.iter().flat_map(|s| s.option_keys()).collect();
    valid.sort();
    valid.dedup();
    ConfigError::UnknownKey { origin: None, key: key.to_owned(), valid }
}

/// Checks `scheme.KEY=VALUE` settings (prefix stripped) against the selected `schemes` before
/// any run: some selected scheme has options, every key is an option of one of them, and each
/// accepts the values of its own keys.
pub fn check_scheme_sets(
    sets: &[(String, String)],
    schemes: &[SchemeKind],
) -> Result<(), ConfigError> {
    let Some((first, _)) = sets.first() else { return Ok(()) };
    let with_options: Vec<SchemeKind> =
        schemes.iter().copied().filter(|s| !s.option_keys().is_empty()).collect();
    if with_options.is_empty() {
        let names: Vec<&str> = SchemeKind::ALL
            .iter()
            .filter(|s| !s.option_keys().is_empty())
            .map(|s| s.name())
            .collect();
        return Err(ConfigError::Invalid(format!(
            "--set scheme.{first}: only these schemes have scheme settings, and none is selected: \
             {}",
            names.join(", ")
        )));
    }
    if let Some((key, _)) = sets.iter().find(|(k, _)| !known(&with_options, k)) {
        return Err(unknown(key, &with_options));
    }
    for s in with_options {
        s.check_own_sets(sets).map_err(|e| match e {
            ConfigError::UnknownKey { .. } => e,
            other => ConfigError::Invalid(format!("scheme {}: {other}", s.name())),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(k: &str, v: &str) -> Vec<(String, String)> {
        vec![(k.to_owned(), v.to_owned())]
    }

    #[test]
    fn a_setting_goes_to_the_schemes_that_have_its_key() {
        let both = [SchemeKind::Ssp, SchemeKind::SpecShadow];
        check_scheme_sets(&set("root_buffer", "4"), &both).unwrap();
        check_scheme_sets(&set("squash_penalty", "40"), &both).unwrap();
        assert_eq!(SchemeKind::Ssp.own_sets(&set("squash_penalty", "40")).unwrap(), vec![]);
        assert_eq!(SchemeKind::SpecShadow.own_sets(&set("ways", "8")).unwrap(), set("ways", "8"));
    }

    #[test]
    fn keys_no_selected_scheme_has_and_bad_values_are_refused() {
        let e = check_scheme_sets(&set("root_buffer", "4"), &[SchemeKind::SpecShadow]).unwrap_err();
        assert!(e.to_string().contains("unknown key `root_buffer`"), "{e}");
        assert!(e.to_string().contains("squash_penalty"), "{e}");
        let e = check_scheme_sets(&set("ways", "0"), &[SchemeKind::SpecShadow]).unwrap_err();
        assert!(e.to_string().contains("spec-shadow"), "{e}");
        let e = check_scheme_sets(&set("ways", "8"), &[SchemeKind::Native]).unwrap_err();
        assert!(e.to_string().contains("spec-shadow"), "{e}");
        assert!(SchemeKind::Nested.own_sets(&set("colour", "red")).is_err());
    }
}
