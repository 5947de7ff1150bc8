//! SQLite values → Ferry values, and a declared type → the column a mirror
//! gets in PostgreSQL. Pure: no I/O.
//!
//! SQLite types values, not columns: a column's declared type only gives it
//! an *affinity* (a preference SQLite applies on write when the conversion
//! is lossless), and any column may hold any of the five storage classes.
//! Ferry keeps what each value *is*, never what its column says:
//!
//! | storage class | Ferry value       |
//! |---------------|-------------------|
//! | NULL          | `Value::Null`     |
//! | INTEGER       | `Value::Int`      |
//! | REAL          | `Value::Float`    |
//! | TEXT          | `Value::Text`     |
//! | BLOB          | `Value::Bytes`    |
//!
//! A date stored as text stays text, unix seconds stay an integer, a Julian
//! day stays a real: a mapping decides what they become. A mirrored table
//! (no mapping) gets one PostgreSQL column per declared column, typed by
//! [`mirror_type`]; a value PostgreSQL does not accept for that type (text
//! in a `bigint` column, `1.5` in a `bigint` column, unix seconds in a
//! `timestamptz` column) is dead-lettered by the sink with PostgreSQL's
//! reason, never converted by Ferry.

use ferry_pipeline::value::Value;

/// One value as SQLite stores it.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<rusqlite::types::Value> for Stored {
    fn from(v: rusqlite::types::Value) -> Self {
        use rusqlite::types::Value as V;
        match v {
            V::Null => Stored::Null,
            V::Integer(i) => Stored::Integer(i),
            V::Real(f) => Stored::Real(f),
            V::Text(s) => Stored::Text(s),
            V::Blob(b) => Stored::Blob(b),
        }
    }
}

/// A stored value as a Ferry value: the storage class decides, never the
/// declared type (see the module table).
pub fn to_value(v: Stored) -> Value {
    match v {
        Stored::Null => Value::Null,
        Stored::Integer(i) => Value::Int(i),
        Stored::Real(f) => Value::Float(f),
        Stored::Text(s) => Value::Text(s),
        Stored::Blob(b) => Value::Bytes(b),
    }
}

/// A column's affinity, by SQLite's rules (§3.1 of "Datatypes In SQLite"),
/// applied in that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    Integer,
    Text,
    Blob,
    Real,
    Numeric,
}

/// The affinity SQLite gives a column declared as `declared`.
pub fn affinity(declared: &str) -> Affinity {
    let t = declared.to_ascii_uppercase();
    if t.contains("INT") {
        Affinity::Integer
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        Affinity::Text
    } else if t.contains("BLOB") || t.trim().is_empty() {
        Affinity::Blob
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        Affinity::Real
    } else {
        Affinity::Numeric
    }
}

/// The PostgreSQL type a mirrored column gets, from its declared type:
///
/// - INTEGER affinity → `bigint` (SQLite integers are 64-bit);
/// - TEXT affinity → `text`;
/// - REAL affinity → `double precision`;
/// - no declared type → `text` (what such columns hold in practice: the
///   rule makes a number or a blob in it visible, see [`misfit`]);
/// - BLOB → `bytea`;
/// - NUMERIC affinity by name: `BOOLEAN`/`BOOL` → `boolean`; `DATE` →
///   `date`; `DATETIME`/`TIMESTAMP*` → `timestamptz` (SQLite's date
///   functions work in UTC, and a zone in the text is kept, not dropped as
///   `timestamp` would); `DECIMAL(p,s)`/`NUMERIC(p,s)` → `numeric(p,s)`;
///   anything else → `numeric`.
pub fn mirror_type(declared: &str) -> String {
    let upper = declared.trim().to_ascii_uppercase();
    match affinity(declared) {
        Affinity::Integer => "bigint".into(),
        Affinity::Text => "text".into(),
        Affinity::Real => "double precision".into(),
        Affinity::Blob if upper.is_empty() => "text".into(),
        Affinity::Blob => "bytea".into(),
        Affinity::Numeric => {
            let base = upper.split('(').next().unwrap_or("").trim();
            match base {
                "BOOLEAN" | "BOOL" => "boolean".into(),
                "DATE" => "date".into(),
                b if b.starts_with("DATETIME") || b.starts_with("TIMESTAMP") => {
                    "timestamptz".into()
                }
                "DECIMAL" | "NUMERIC" => match modifiers(&upper) {
                    Some((p, s)) => format!("numeric({p},{s})"),
                    None => "numeric".into(),
                },
                _ => "numeric".into(),
            }
        }
    }
}

/// `(p,s)` or `(p)` of a declared `DECIMAL(p,s)`, within PostgreSQL's
/// limits; `None` when absent or out of range (plain `numeric` then).
fn modifiers(upper: &str) -> Option<(u32, u32)> {
    let inner = upper.split_once('(')?.1.split_once(')')?.0;
    let mut parts = inner.split(',').map(|p| p.trim().parse::<u32>());
    let p = parts.next()?.ok()?;
    let s = match parts.next() {
        Some(s) => s.ok()?,
        None => 0,
    };
    (parts.next().is_none() && (1..=1000).contains(&p) && s <= p).then_some((p, s))
}

/// Why a value does not fit its mirrored column, where PostgreSQL would
/// accept its text anyway and change its meaning; `None` when it fits or
/// when PostgreSQL itself refuses what does not (the sink dead-letters
/// those with PostgreSQL's reason).
///
/// The cases: a BLOB in a `text`, `date` or `timestamptz` column (its hex
/// text would be stored as characters); an INTEGER or REAL in a `date` or
/// `timestamptz` column (`20240101` would parse as a date); TEXT in a
/// `bytea` column (a backslash in it would be read as an escape).
pub fn misfit(v: &Value, pg_type: &str) -> Option<&'static str> {
    match (v, pg_type) {
        (Value::Bytes(_), "text" | "date" | "timestamptz") => {
            Some("a BLOB in a column mirrored as text or a date")
        }
        (Value::Int(_) | Value::Float(_), "date" | "timestamptz") => {
            Some("a number in a date column (unix seconds or a Julian day): map it with a mapping")
        }
        (Value::Text(_), "bytea") => Some("TEXT in a BLOB column"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn affinity_follows_sqlite_rules_in_order() {
        assert_eq!(affinity("INTEGER"), Affinity::Integer);
        assert_eq!(affinity("BIGINT"), Affinity::Integer);
        // "INT" wins over "CHAR" (rule order), a classic SQLite surprise.
        assert_eq!(affinity("CHARINT"), Affinity::Integer);
        assert_eq!(affinity("VARCHAR(255)"), Affinity::Text);
        assert_eq!(affinity("text"), Affinity::Text);
        assert_eq!(affinity("BLOB"), Affinity::Blob);
        assert_eq!(affinity(""), Affinity::Blob);
        assert_eq!(affinity("DOUBLE PRECISION"), Affinity::Real);
        assert_eq!(affinity("FLOAT"), Affinity::Real);
        // "POINT" contains "INT": integer affinity, as in SQLite.
        assert_eq!(affinity("POINT"), Affinity::Integer);
        assert_eq!(affinity("DATETIME"), Affinity::Numeric);
        assert_eq!(affinity("BOOLEAN"), Affinity::Numeric);
        assert_eq!(affinity("DECIMAL(10,2)"), Affinity::Numeric);
    }

    #[test]
    fn mirror_types() {
        for (declared, want) in [
            ("INTEGER", "bigint"),
            ("TEXT", "text"),
            ("", "text"),
            ("BLOB", "bytea"),
            ("REAL", "double precision"),
            ("BOOLEAN", "boolean"),
            ("DATE", "date"),
            ("DATETIME", "timestamptz"),
            ("timestamp", "timestamptz"),
            ("DECIMAL(10,2)", "numeric(10,2)"),
            ("NUMERIC(5)", "numeric(5,0)"),
            ("NUMERIC(2,5)", "numeric"),
            ("NUMERIC", "numeric"),
            ("JSONB", "numeric"),
        ] {
            assert_eq!(mirror_type(declared), want, "{declared}");
        }
    }

    #[test]
    fn values_keep_their_storage_class() {
        assert_eq!(to_value(Stored::Integer(7)), Value::Int(7));
        assert_eq!(to_value(Stored::Real(7.0)), Value::Float(7.0));
        assert_eq!(to_value(Stored::Text("7".into())), Value::Text("7".into()));
        assert_eq!(to_value(Stored::Blob(vec![0, 1])), Value::Bytes(vec![0, 1]));
        assert_eq!(to_value(Stored::Null), Value::Null);
    }

    #[test]
    fn misfits_are_the_silent_coercions_only() {
        assert!(misfit(&Value::Bytes(vec![1]), "text").is_some());
        assert!(misfit(&Value::Int(1_700_000_000), "timestamptz").is_some());
        assert!(misfit(&Value::Float(2_460_000.5), "date").is_some());
        assert!(misfit(&Value::Text("a\\x".into()), "bytea").is_some());
        // PostgreSQL refuses these itself, with its own reason.
        assert!(misfit(&Value::Text("abc".into()), "bigint").is_none());
        assert!(misfit(&Value::Float(1.5), "bigint").is_none());
        assert!(misfit(&Value::Text("2024-01-01".into()), "date").is_none());
        assert!(misfit(&Value::Int(1), "double precision").is_none());
    }

    proptest! {
        /// Every integer and text round-trips unchanged (no coercion by
        /// the declared type: there is none to apply).
        #[test]
        fn integers_and_text_round_trip(i in any::<i64>(), s in ".*") {
            prop_assert_eq!(to_value(Stored::Integer(i)), Value::Int(i));
            prop_assert_eq!(to_value(Stored::Text(s.clone())), Value::Text(s));
        }

        /// Any declared type gets some mirror type; never a panic.
        #[test]
        fn every_declared_type_has_a_mirror(t in "[A-Za-z(), 0-9]{0,20}") {
            prop_assert!(!mirror_type(&t).is_empty());
        }
    }
}
