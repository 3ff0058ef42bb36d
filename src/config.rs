//! Overrides over any serde type: `--set key=value` assignments and TOML files merged over a base.
//!
//! A value is seen as the tree it serializes to: every leaf has a dotted key
//! (`mmu.tlb.l2.entries`; array elements by number, `mmu.pwc.0.entries`). An override must name
//! an existing leaf and give a value of that leaf's type, so a typo or a wrong type is an error that
//! names the key and lists the valid ones, never a silently ignored setting. The same machinery
//! serves hardware profiles and workload parameters.
//!
//! Limits: a field serialized as nothing (`Option::None`) has no key and cannot be set; a table key
//! containing a `.` cannot be addressed.

use serde::de::DeserializeOwned;
use serde::Serialize;
use toml::{Table, Value};

/// A bad setting, assignment or settings file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key that is not in the settings tree.
    #[error("{}unknown key `{key}`; valid keys:\n  {}", at(.origin), .valid.join("\n  "))]
    UnknownKey {
        /// The file the key came from, if any.
        origin: Option<String>,
        /// The dotted key as given.
        key: String,
        /// Every valid dotted key, sorted.
        valid: Vec<String>,
    },
    /// A key naming a group of settings rather than one value.
    #[error("{}`{key}` is a group of settings, not one value; set one of:\n  {}",
        at(.origin), .leaves.join("\n  "))]
    NotALeaf {
        /// The file the key came from, if any.
        origin: Option<String>,
        /// The dotted key as given.
        key: String,
        /// The leaves under it, sorted.
        leaves: Vec<String>,
    },
    /// A value of the wrong type for its key.
    #[error("{}`{key}` expects {expected}, got `{value}`", at(.origin))]
    WrongType {
        /// The file the value came from, if any.
        origin: Option<String>,
        /// The dotted key.
        key: String,
        /// What the key takes ("an integer", "a boolean (true/false/on/off/yes/no/1/0)", ...).
        expected: &'static str,
        /// The value given.
        value: String,
    },
    /// An assignment without `=`.
    #[error("`{0}` is not a `key=value` assignment")]
    Malformed(String),
    /// A file that is not valid TOML; toml's message gives the line and column.
    #[error("{origin}: not valid TOML: {message}")]
    BadToml {
        /// The file.
        origin: String,
        /// toml's message, with line and column.
        message: String,
    },
    /// A file that could not be read.
    #[error("cannot read {path}: {error}")]
    Unreadable {
        /// The path as given.
        path: String,
        /// The I/O error (printed in the message, so not exposed as a source too).
        error: std::io::Error,
    },
    /// A profile name that is neither built in nor a file.
    #[error("{}unknown profile `{name}` (not a file either); built-in profiles: {}",
        at(.origin), .known.join(", "))]
    UnknownProfile {
        /// The file that named it (as its `base`), if any.
        origin: Option<String>,
        /// The name as given.
        name: String,
        /// The built-in profiles.
        known: Vec<String>,
    },
    /// Settings the target type rejected after the override (an unknown enum variant, a negative
    /// count, a value out of the type's range, ...).
    #[error("{}{message}", at(.origin))]
    Rejected {
        /// The file the settings came from, if any.
        origin: Option<String>,
        /// What was rejected and why.
        message: String,
    },
    /// Settings that are well-typed but make no sense together or out of range
    /// ("memory.guest_mib must be between 1 and 65536").
    #[error("{0}")]
    Invalid(String),
}

/// `"origin: "` or nothing, for error messages.
fn at(origin: &Option<String>) -> String {
    origin.as_ref().map(|o| format!("{o}: ")).unwrap_or_default()
}

/// Every leaf of `value`'s settings tree as a dotted key, in tree order (table keys sorted, array
/// elements by index). Empty on a value that cannot be represented as TOML.
pub fn keys<T: Serialize>(value: &T) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(tree) = Value::try_from(value) {
        collect(&tree, "", &mut out);
    }
    out
}

/// Splits `key=value` (whitespace around either side is trimmed).
pub fn parse_assignment(s: &str) -> Result<(String, String), ConfigError> {
    match s.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(ConfigError::Malformed(s.to_owned())),
    }
}

/// Applies `KEY=VALUE` settings in order with [`set`] (options structs, workload parameters).
pub fn set_all<T: Serialize + DeserializeOwned>(
    mut value: T,
    sets: &[(String, String)],
) -> Result<T, ConfigError> {
    for (key, raw) in sets {
        value = set(&value, key, raw)?;
    }
    Ok(value)
}

/// `value` with the leaf `key` set from the text `raw`, parsed as the leaf's current type:
/// integers (`_` separators and `0x`/`0o`/`0b` prefixes allowed), floats (an integer literal too),
/// booleans (`true/false/on/off/yes/no/1/0`, any case), strings (the text as is), and for an empty
/// array or table an inline TOML value.
pub fn set<T: Serialize + DeserializeOwned>(
    value: &T,
    key: &str,
    raw: &str,
) -> Result<T, ConfigError> {
    let mut tree = to_tree(value)?;
    let Some(slot) = find_mut(&mut tree, key) else {
        return Err(ConfigError::UnknownKey {
            origin: None,
            key: key.to_owned(),
            valid: sorted(keys(value)),
        });
    };
    if !is_leaf(slot) {
        let mut leaves = Vec::new();
        collect(slot, key, &mut leaves);
        return Err(ConfigError::NotALeaf {
            origin: None,
            key: key.to_owned(),
            leaves: sorted(leaves),
        });
    }
    *slot = parse_like(slot, raw).ok_or_else(|| ConfigError::WrongType {
        origin: None,
        key: key.to_owned(),
        expected: expected(slot),
        value: raw.to_owned(),
    })?;
    from_tree(tree, None).map_err(|e| match e {
        ConfigError::Rejected { origin, message } => {
            ConfigError::Rejected { origin, message: format!("`{key} = {raw}`: {message}") }
        }
        other => other,
    })
}

/// `value` with the TOML document `text` deep-merged over it. Every key of `text` must exist in
/// `value`'s tree and hold a value of the same type (an integer is accepted for a float);
/// `origin` (a file name) starts every error message.
pub fn merge_file<T: Serialize + DeserializeOwned>(
    value: &T,
    text: &str,
    origin: &str,
) -> Result<T, ConfigError> {
    let table: Table = text.parse().map_err(|e: toml::de::Error| ConfigError::BadToml {
        origin: origin.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    merge_table(value, table, origin)
}

/// [`merge_file`] for an already-parsed TOML table.
///
/// Arrays: the file's array replaces the base's, each element merged over the base element at the
/// same index (so a partial table keeps the base's other fields); elements past the base's length
/// are taken as given.
pub fn merge_table<T: Serialize + DeserializeOwned>(
    value: &T,
    table: Table,
    origin: &str,
) -> Result<T, ConfigError> {
    let base = to_tree(value)?;
    let mut tree = base.clone();
    let origin_some = || Some(origin.to_owned());
    merge_into(&mut tree, Value::Table(table.clone()), "").map_err(|e| match e {
        MergeError::Unknown(key) => {
            ConfigError::UnknownKey { origin: origin_some(), key, valid: sorted(keys(value)) }
        }
        MergeError::WrongType { key, expected, value } => {
            ConfigError::WrongType { origin: origin_some(), key, expected, value }
        }
    })?;
    from_tree(tree, Some(origin)).map_err(|e| match (e, blame::<T>(&base, &table)) {
        (ConfigError::Rejected { origin, message }, Some(key)) => {
            ConfigError::Rejected { origin, message: format!("`{key}`: {message}") }
        }
        (e, _) => e,
    })
}

/// The first setting of `over` that the target type rejects on its own (tables are descended
/// into, arrays judged whole), to name the key in an error. Only run once a merge has failed.
fn blame<T: DeserializeOwned>(base: &Value, over: &Table) -> Option<String> {
    let mut settings = Vec::new();
    settings_of(over, "", &mut settings);
    settings.into_iter().find_map(|(key, value)| {
        let mut tree = base.clone();
        let slot = find_mut(&mut tree, &key)?;
        merge_into(slot, value.clone(), &key).ok()?;
        from_tree::<T>(tree, None).is_err().then_some(key)
    })
}

fn settings_of<'a>(table: &'a Table, prefix: &str, out: &mut Vec<(String, &'a Value)>) {
    for (k, v) in table {
        match v {
            Value::Table(t) => settings_of(t, &join(prefix, k), out),
            _ => out.push((join(prefix, k), v)),
        }
    }
}

/// Why a merge failed, before the error is dressed with the origin and the valid keys.
enum MergeError {
    Unknown(String),
    WrongType { key: String, expected: &'static str, value: String },
}

fn merge_into(base: &mut Value, over: Value, path: &str) -> Result<(), MergeError> {
    match (base, over) {
        // An empty table (a map with no entries yet) has no keys to check against.
        (Value::Table(b), Value::Table(o)) if b.is_empty() => *b = o,
        (Value::Table(b), Value::Table(o)) => {
            for (k, v) in o {
                let key = join(path, &k);
                match b.get_mut(&k) {
                    Some(slot) => merge_into(slot, v, &key)?,
                    None => return Err(MergeError::Unknown(key)),
                }
            }
        }
        (Value::Array(b), Value::Array(o)) => {
            let mut merged = Vec::with_capacity(o.len());
            for (i, item) in o.into_iter().enumerate() {
                match b.get(i) {
                    Some(template) => {
                        let mut slot = template.clone();
                        merge_into(&mut slot, item, &join(path, &i.to_string()))?;
                        merged.push(slot);
                    }
                    None => merged.push(item),
                }
            }
            *b = merged;
        }
        (Value::Float(b), Value::Integer(i)) => {
            // Exact below 2^53; no float setting is that large.
            #[allow(clippy::cast_precision_loss)]
            let f = i as f64;
            *b = f;
        }
        (b, o) if std::mem::discriminant(b) == std::mem::discriminant(&o) => *b = o,
        (b, o) => {
            return Err(MergeError::WrongType {
                key: path.to_owned(),
                expected: expected(b),
                value: o.to_string(),
            })
        }
    }
    Ok(())
}

fn to_tree<T: Serialize>(value: &T) -> Result<Value, ConfigError> {
    Value::try_from(value).map_err(|e| ConfigError::Rejected {
        origin: None,
        message: format!("settings cannot be represented as TOML: {e}"),
    })
}

fn from_tree<T: DeserializeOwned>(tree: Value, origin: Option<&str>) -> Result<T, ConfigError> {
    tree.try_into().map_err(|e: toml::de::Error| ConfigError::Rejected {
        origin: origin.map(str::to_owned),
        message: e.message().trim_end().to_owned(),
    })
}

/// The node at dotted `key`: table keys by name, array elements by number.
fn find_mut<'a>(tree: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    key.split('.').try_fold(tree, |node, seg| match node {
        Value::Table(t) => t.get_mut(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
        _ => None,
    })
}

/// A leaf: a scalar, or an empty array or table (which has no keys below it).
fn is_leaf(v: &Value) -> bool {
    match v {
        Value::Table(t) => t.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => true,
    }
}

fn collect(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Table(t) if !t.is_empty() => {
            for (k, child) in t {
                collect(child, &join(prefix, k), out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, child) in a.iter().enumerate() {
                collect(child, &join(prefix, &i.to_string()), out);
            }
        }
        _ if !prefix.is_empty() => out.push(prefix.to_owned()),
        _ => {}
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// What a leaf like `v` takes, for error messages.
fn expected(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "a boolean (true/false/on/off/yes/no/1/0)",
        Value::Datetime(_) => "a TOML date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// `raw` parsed as a value of the same type as `like`, or `None` if it is not one.
fn parse_like(like: &Value, raw: &str) -> Option<Value> {
    let text = raw.trim();
    match like {
        Value::String(_) => Some(Value::String(raw.to_owned())),
        Value::Integer(_) => parse_int(text).map(Value::Integer),
        Value::Float(_) => text.replace('_', "").parse().ok().map(Value::Float),
        Value::Boolean(_) => parse_bool(text).map(Value::Boolean),
        Value::Datetime(_) => text.parse().ok().map(Value::Datetime),
        Value::Array(_) | Value::Table(_) => {
            let doc: Table = format!("v = {text}").parse().ok()?;
            doc.get("v")
                .filter(|v| std::mem::discriminant(*v) == std::mem::discriminant(like))
                .cloned()
        }
    }
}

/// A decimal, `0x`, `0o` or `0b` integer with an optional sign and `_` separators.
fn parse_int(text: &str) -> Option<i64> {
    let digits = text.replace('_', "");
    let (negative, unsigned) = match digits.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, digits.strip_prefix('+').unwrap_or(&digits)),
    };
    let (radix, body) = [("0x", 16), ("0o", 8), ("0b", 2)]
        .into_iter()
        .find_map(|(p, r)| unsigned.strip_prefix(p).map(|b| (r, b)))
        .unwrap_or((10, unsigned));
    // Signs were taken off above; a second one is an error.
    if body.is_empty() || body.starts_with(['+', '-']) {
        return None;
    }
    let magnitude = i128::from_str_radix(body, radix).ok()?;
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Some(true),
        "false" | "off" | "no" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        size: u64,
        ratio: f64,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Level {
        entries: usize,
        ways: usize,
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        name: String,
        enabled: bool,
        count: u32,
        inner: Inner,
        levels: [Level; 2],
    }

    fn base() -> Settings {
        Settings {
            name: "base".into(),
            enabled: true,
            count: 3,
            inner: Inner { size: 4096, ratio: 0.5 },
            levels: [Level { entries: 32, ways: 4 }, Level { entries: 4, ways: 4 }],
        }
    }

    const ALL_KEYS: [&str; 9] = [
        "count",
        "enabled",
        "inner.ratio",
        "inner.size",
        "levels.0.entries",
        "levels.0.ways",
        "levels.1.entries",
        "levels.1.ways",
        "name",
    ];

    fn message(e: &ConfigError) -> String {
        e.to_string()
    }

    #[test]
    fn keys_lists_every_leaf_with_array_indices() {
        assert_eq!(keys(&base()), ALL_KEYS);
    }

    #[test]
    fn set_parses_each_type_like_the_leaf() -> Result<(), ConfigError> {
        let s = set(&base(), "count", "1_000")?;
        let s = set(&s, "inner.ratio", "2")?;
        let s = set(&s, "inner.size", "0x1000_0000")?;
        let s = set(&s, "levels.1.entries", "8")?;
        let s = set(&s, "name", "with spaces = fine")?;
        let s = set(&s, "enabled", "OFF")?;
        assert_eq!(s.count, 1_000);
        assert!((s.inner.ratio - 2.0).abs() < f64::EPSILON);
        assert_eq!(s.inner.size, 0x1000_0000);
        assert_eq!(s.levels[1], Level { entries: 8, ways: 4 });
        assert_eq!(s.name, "with spaces = fine");
        assert!(!s.enabled);
        Ok(())
    }

    #[test]
    fn bools_accept_on_off_yes_no_and_digits() -> Result<(), ConfigError> {
        for (raw, want) in [("on", true), ("No", false), ("YES", true), ("0", false), ("1", true)] {
            assert_eq!(set(&base(), "enabled", raw)?.enabled, want, "{raw}");
        }
        assert!(matches!(set(&base(), "enabled", "maybe"), Err(ConfigError::WrongType { .. })));
        Ok(())
    }

    #[test]
    fn unknown_key_lists_valid_keys() {
        let err = set(&base(), "inner.sise", "1").unwrap_err();
        let ConfigError::UnknownKey { key, valid, .. } = &err else { panic!("{err}") };
        assert_eq!(key, "inner.sise");
        assert_eq!(valid, &ALL_KEYS);
        let text = message(&err);
        assert!(text.contains("inner.sise") && text.contains("levels.1.ways"), "{text}");
        // An index past the end of an array is unknown too.
        assert!(matches!(set(&base(), "levels.2.ways", "1"), Err(ConfigError::UnknownKey { .. })));
    }

    #[test]
    fn a_group_is_not_a_leaf() {
        let err = set(&base(), "levels.0", "1").unwrap_err();
        assert!(message(&err).contains("levels.0.entries"), "{err}");
    }

    #[test]
    fn type_mismatch_names_key_type_and_value() {
        let err = set(&base(), "count", "lots").unwrap_err();
        let text = message(&err);
        assert!(matches!(err, ConfigError::WrongType { .. }));
        assert!(
            text.contains("count") && text.contains("integer") && text.contains("lots"),
            "{text}"
        );
        assert!(matches!(set(&base(), "inner.ratio", "half"), Err(ConfigError::WrongType { .. })));
    }

    #[test]
    fn out_of_range_values_are_rejected_with_the_key() {
        let err = set(&base(), "count", "-1").unwrap_err();
        let text = message(&err);
        assert!(matches!(err, ConfigError::Rejected { .. }));
        assert!(text.contains("count = -1"), "{text}");
    }

    #[test]
    fn assignments_split_at_the_first_equals() -> Result<(), ConfigError> {
        assert_eq!(parse_assignment(" a.b = c=d ")?, ("a.b".to_owned(), "c=d".to_owned()));
        assert!(matches!(parse_assignment("novalue"), Err(ConfigError::Malformed(_))));
        assert!(matches!(parse_assignment("=1"), Err(ConfigError::Malformed(_))));
        Ok(())
    }

    #[test]
    fn merge_round_trips_and_keeps_unnamed_fields() -> Result<(), ConfigError> {
        let text =
            "count = 7\n[inner]\nratio = 1\n[[levels]]\nways = 8\n[[levels]]\nentries = 16\n";
        let s = merge_file(&base(), text, "over.toml")?;
        let mut want = base();
        want.count = 7;
        want.inner.ratio = 1.0;
        want.levels = [Level { entries: 32, ways: 8 }, Level { entries: 16, ways: 4 }];
        assert_eq!(s, want);
        // Serializing and merging a whole value gives it back.
        let whole = toml::to_string(&want).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        assert_eq!(merge_file(&base(), &whole, "whole.toml")?, want);
        Ok(())
    }

    #[test]
    fn merge_unknown_key_names_origin_and_key() {
        let err = merge_file(&base(), "[inner]\nsize = 1\nsise = 2\n", "over.toml").unwrap_err();
        let text = message(&err);
        assert!(matches!(err, ConfigError::UnknownKey { .. }));
        assert!(text.starts_with("over.toml: ") && text.contains("`inner.sise`"), "{text}");
        assert!(text.contains("inner.size"), "{text}");
    }

    #[test]
    fn merge_wrong_type_names_origin_key_and_value() {
        let err = merge_file(&base(), "enabled = \"yes\"\n", "over.toml").unwrap_err();
        let text = message(&err);
        assert!(matches!(err, ConfigError::WrongType { .. }));
        assert!(text.contains("over.toml") && text.contains("enabled"), "{text}");
        assert!(text.contains("boolean") && text.contains("\"yes\""), "{text}");
        let err = merge_file(&base(), "inner = 3\n", "over.toml").unwrap_err();
        assert!(message(&err).contains("a table"), "{err}");
    }

    #[test]
    fn merge_rejected_value_names_origin_and_key() {
        let err =
            merge_file(&base(), "name = \"x\"\n[inner]\nsize = -1\n", "over.toml").unwrap_err();
        let text = message(&err);
        assert!(matches!(err, ConfigError::Rejected { .. }));
        assert!(text.starts_with("over.toml: `inner.size`: "), "{text}");
        let err = merge_file(&base(), "levels = [{ ways = 1 }]\n", "over.toml").unwrap_err();
        assert!(message(&err).contains("`levels`"), "{err}");
    }

    #[test]
    fn merge_bad_toml_names_file_and_line() {
        let err = merge_file(&base(), "count = 1\ncount = = 2\n", "bad.toml").unwrap_err();
        let text = message(&err);
        assert!(matches!(err, ConfigError::BadToml { .. }));
        assert!(text.contains("bad.toml") && text.contains("line 2"), "{text}");
    }

    #[test]
    fn integers_take_separators_prefixes_and_signs() {
        assert_eq!(parse_int("1_000"), Some(1_000));
        assert_eq!(parse_int("-0x10"), Some(-16));
        assert_eq!(parse_int("+0b101"), Some(5));
        assert_eq!(parse_int("--1"), None);
        assert_eq!(parse_int("0x"), None);
        assert_eq!(parse_int("9223372036854775808"), None);
        assert_eq!(parse_int("-9223372036854775808"), Some(i64::MIN));
    }
}
