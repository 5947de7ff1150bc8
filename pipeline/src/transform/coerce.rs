//! Coercions to the target column's type: which coercion a column's SQL
//! type calls for, and the value it makes of a source value (or the
//! [`Refusal`] that names the rule it breaks).

use super::TargetColumn;
use crate::calendar;
use crate::decimal::{self, DecimalTarget};
use crate::id_map::{self, IdKind, LegacyId};
use crate::json::{float_text, json_text};
use crate::value::{object_id_hex, Decimal, Numeric, TemporalKind, Value};

/// How a value becomes the column's type.
#[derive(Debug, Clone)]
pub(super) enum Coercion {
    Decimal(DecimalTarget),
    Int {
        min: i64,
        max: i64,
    },
    Text,
    Bool,
    Uuid,
    Temporal(TemporalKind),
    Json,
    /// The legacy id's text; the sink translates it.
    Id,
    /// An array of legacy ids (into an array column, or jsonb), each
    /// element's text; the sink translates them element by element.
    IdArray,
    /// Any other type: the value as is, read by the target.
    AsIs,
}

/// The type without modifiers, lowercased: `numeric(12,2)` → `numeric`.
pub(super) fn base_type(type_sql: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for ch in type_sql.chars() {
        match ch {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    out.trim().to_lowercase()
}

/// Whether a column of `type_sql` can hold the new ids of `kind`.
pub(super) fn id_fits(kind: IdKind, type_sql: &str) -> bool {
    // An array column holds ids when its element type does; jsonb holds
    // any (UUIDs as strings, bigints as numbers).
    if let Some(element) = type_sql.trim().strip_suffix("[]") {
        return id_fits(kind, element);
    }
    if takes_id_array(type_sql) {
        return true;
    }
    let base = base_type(type_sql);
    match kind {
        // Legacy ids written back by a reverse pipeline: an old `serial`
        // key is often an integer; an ObjectId's text has 24 characters.
        IdKind::Inverse {
            legacy: LegacyId::Bigint,
        } if base == "integer" => return true,
        IdKind::Inverse {
            legacy: LegacyId::ObjectId,
        } => {
            return base == "text"
                || (base == "character varying"
                    && varchar_length(type_sql).is_none_or(|n| n >= 24))
        }
        _ => {}
    }
    // A text column must also be long enough for the id's text: 36
    // characters for a hyphenated UUID, 20 for a bigint (with its sign).
    let longest = if kind.is_uuid() { 36 } else { 20 };
    let long_enough = || varchar_length(type_sql).is_none_or(|n| n >= longest);
    match kind.is_uuid() {
        true => match base.as_str() {
            "uuid" | "text" => true,
            "character varying" => long_enough(),
            _ => false,
        },
        false => match base.as_str() {
            "bigint" | "numeric" | "text" => true,
            "character varying" => long_enough(),
            _ => false,
        },
    }
}

/// Whether an id-mapped column of `type_sql` takes a whole array of ids
/// (`uuid[]`, `bigint[]`, `text[]`, json/jsonb) rather than one.
pub(super) fn takes_id_array(type_sql: &str) -> bool {
    type_sql.trim().ends_with("[]") || matches!(base_type(type_sql).as_str(), "json" | "jsonb")
}

/// `n` of `character varying(n)`; `None` without a length.
fn varchar_length(type_sql: &str) -> Option<u32> {
    let rest = type_sql.trim().strip_prefix("character varying(")?;
    rest.split(')').next()?.trim().parse().ok()
}

/// How values become `col`'s type; `round` applies to numeric columns.
/// Refused (with the reason) only for a `numeric` type text that does not
/// parse.
pub(super) fn coercion_for(
    col: &TargetColumn,
    round: Option<decimal::RoundingMode>,
) -> Result<Coercion, String> {
    let base = base_type(&col.type_sql);
    if base.ends_with("[]") {
        return Ok(Coercion::AsIs);
    }
    Ok(match base.as_str() {
        "numeric" => {
            let mut t = DecimalTarget::from_type_sql(&col.type_sql, col.nullable)
                .map_err(|e| e.to_string())?;
            t.rounding = round;
            Coercion::Decimal(t)
        }
        "smallint" => Coercion::Int {
            min: i16::MIN.into(),
            max: i16::MAX.into(),
        },
        "integer" => Coercion::Int {
            min: i32::MIN.into(),
            max: i32::MAX.into(),
        },
        "bigint" => Coercion::Int {
            min: i64::MIN,
            max: i64::MAX,
        },
        "text" | "character varying" | "character" | "bpchar" | "name" | "citext" => Coercion::Text,
        "boolean" => Coercion::Bool,
        "uuid" => Coercion::Uuid,
        "timestamp with time zone" => Coercion::Temporal(TemporalKind::Timestamptz),
        "timestamp without time zone" => Coercion::Temporal(TemporalKind::Timestamp),
        "date" => Coercion::Temporal(TemporalKind::Date),
        "json" | "jsonb" => Coercion::Json,
        _ => Coercion::AsIs,
    })
}

/// A short, exact rendering of a value for messages.
pub(super) fn raw(v: &Value) -> String {
    let t = match v {
        Value::Null => "null".to_string(),
        Value::Text(s) => format!("{s:?}"),
        other => json_text(other),
    };
    if t.len() > 200 {
        let cut = (0..=200)
            .rev()
            .find(|&i| t.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}…", &t[..cut])
    } else {
        t
    }
}

/// Why a value cannot become its column's type. The record's context
/// (table, key, field) is the caller's to add: a default is refused while
/// compiling, a field's value while applying.
///
/// Not [`decimal::Rejection`] itself: that one is a numeric column's
/// refusal (its rules are decimal rules) and is carried here whole; the
/// other variants are the rules of the other column types.
#[derive(Debug)]
pub(super) enum Refusal {
    /// A numeric column's rule (`needs_rounding`, `too_large`, …).
    Decimal(decimal::Rejection),
    /// Rule `not_coercible`: not a value of a kind the column takes, or
    /// out of its range.
    NotCoercible(String),
    /// Rule `bad_id`: not a legacy id.
    BadId(String),
}

impl Refusal {
    /// The rule's stable name, the dead-letter record's error code.
    pub(super) fn rule(&self) -> &'static str {
        match self {
            Refusal::Decimal(r) => r.rule.as_str(),
            Refusal::NotCoercible(_) => "not_coercible",
            Refusal::BadId(_) => "bad_id",
        }
    }

    /// What is wrong with the value, naming it.
    pub(super) fn reason(&self) -> &str {
        match self {
            Refusal::Decimal(r) => &r.message,
            Refusal::NotCoercible(reason) | Refusal::BadId(reason) => reason,
        }
    }

    pub(super) fn into_reason(self) -> String {
        match self {
            Refusal::Decimal(r) => r.message,
            Refusal::NotCoercible(reason) | Refusal::BadId(reason) => reason,
        }
    }
}

fn not_coercible(v: &Value, what: &str) -> Refusal {
    Refusal::NotCoercible(format!("{} is not {what}", raw(v)))
}

/// Coerces a value to a column's type, or says which rule refuses it.
pub(super) fn coerce(v: Value, c: &Coercion) -> Result<Value, Refusal> {
    if v.is_null() {
        return match c {
            Coercion::Decimal(t) => decimal::normalize(&v, t).map_err(Refusal::Decimal),
            _ => Ok(Value::Null),
        };
    }
    match c {
        Coercion::Decimal(t) => decimal::normalize(&v, t).map_err(Refusal::Decimal),
        Coercion::Int { min, max } => {
            let n: Option<i64> = match &v {
                Value::Int(i) => Some(*i),
                Value::Numeric(Numeric::Finite(_)) | Value::Text(_) | Value::Float(_) => {
                    let text = match &v {
                        Value::Text(s) => s.trim().to_string(),
                        Value::Float(f) if f.is_finite() => format!("{f}"),
                        Value::Float(_) => String::new(),
                        other => json_text(other),
                    };
                    integral(&text)
                }
                _ => None,
            };
            match n {
                Some(i) if i >= *min && i <= *max => Ok(Value::Int(i)),
                Some(_) => Err(Refusal::NotCoercible(format!(
                    "{} is out of the column's integer range",
                    raw(&v)
                ))),
                None => Err(not_coercible(&v, "an integer")),
            }
        }
        Coercion::Text => match v {
            Value::Text(_) => Ok(v),
            Value::Int(i) => Ok(Value::Text(i.to_string())),
            Value::Numeric(n) => Ok(Value::Text(n.to_string())),
            Value::Bool(b) => Ok(Value::Text(b.to_string())),
            Value::Uuid(u) => Ok(Value::Text(u.to_string())),
            Value::ObjectId(id) => Ok(Value::Text(object_id_hex(&id))),
            Value::Temporal(_, s) => Ok(Value::Text(s)),
            Value::Float(f) => Ok(Value::Text(float_text(f))),
            other => Err(not_coercible(&other, "text")),
        },
        Coercion::Bool => match &v {
            Value::Bool(_) => Ok(v),
            Value::Text(s) if s.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
            Value::Text(s) if s.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
            _ => Err(not_coercible(&v, "a boolean")),
        },
        Coercion::Uuid => match &v {
            Value::Uuid(_) => Ok(v),
            Value::Text(s) => uuid::Uuid::parse_str(s.trim())
                .map(Value::Uuid)
                .map_err(|_| not_coercible(&v, "a UUID")),
            _ => Err(not_coercible(&v, "a UUID")),
        },
        Coercion::Temporal(kind) => match v {
            Value::Temporal(_, s) | Value::Text(s) => Ok(Value::Temporal(*kind, s)),
            Value::Int(_) | Value::Numeric(Numeric::Finite(_)) | Value::Float(_) => {
                let text = match &v {
                    Value::Float(f) => format!("{f}"),
                    other => json_text(other),
                };
                epoch_millis_text(&text)
                    .map(|s| Value::Temporal(*kind, s))
                    .ok_or_else(|| not_coercible(&v, "milliseconds since 1970 in range"))
            }
            other => Err(not_coercible(&other, "a date or time")),
        },
        Coercion::Json => Ok(match v {
            Value::Json(_) => v,
            other => Value::Json(json_text(&other)),
        }),
        Coercion::Id => match id_map::legacy_text(&v) {
            Ok(Some(t)) => Ok(Value::Text(t)),
            Ok(None) => Ok(Value::Null),
            Err(e) => Err(Refusal::BadId(format!(
                "{} is not an id (a string, a number, an ObjectId or a UUID)",
                e.0
            ))),
        },
        Coercion::IdArray => {
            let items = match v {
                Value::Null => return Ok(Value::Null),
                Value::Array(items) => items,
                // A PostgreSQL source's json/jsonb array.
                Value::Json(ref text) => match serde_json::from_str(text) {
                    Ok(serde_json::Value::Array(items)) => {
                        items.iter().map(super::record::json_to_value).collect()
                    }
                    _ => return Err(Refusal::BadId(format!("{text} is not an array of ids"))),
                },
                other => {
                    return Err(Refusal::BadId(format!(
                        "{} is not an array of ids",
                        raw(&other)
                    )))
                }
            };
            items
                .into_iter()
                .map(|item| match id_map::legacy_text(&item) {
                    Ok(Some(t)) => Ok(Value::Text(t)),
                    Ok(None) => Ok(Value::Null),
                    Err(e) => Err(Refusal::BadId(format!(
                        "element {} is not an id (a string, a number, an ObjectId or a UUID)",
                        e.0
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        Coercion::AsIs => Ok(v),
    }
}

/// The integer a decimal text stands for, if it has no fractional part.
fn integral(text: &str) -> Option<i64> {
    let d: Decimal = text.parse().ok()?;
    let digits = d.digits();
    let scale = d.scale() as usize;
    let (int, frac) = if scale >= digits.len() {
        ("0", digits)
    } else {
        digits.split_at(digits.len() - scale)
    };
    if frac.bytes().any(|b| b != b'0') && scale > 0 {
        return None;
    }
    // Signed before parsing: i64::MIN has no positive counterpart.
    if d.is_negative() {
        format!("-{int}").parse().ok()
    } else {
        int.parse().ok()
    }
}

/// Milliseconds since the Unix epoch (exact decimal text, fractions down
/// to microseconds) as timestamptz text in UTC.
pub(super) fn epoch_millis_text(text: &str) -> Option<String> {
    let d: Decimal = text.parse().ok()?;
    // Work in microseconds: ms * 1000, exactly.
    let digits = d.digits();
    let scale = d.scale() as usize;
    let (int, frac) = if scale >= digits.len() {
        (String::from("0"), format!("{:0>scale$}", digits))
    } else {
        let (a, b) = digits.split_at(digits.len() - scale);
        (a.to_string(), b.to_string())
    };
    if frac.len() > 3 && frac[3..].bytes().any(|b| b != b'0') {
        return None; // finer than a microsecond
    }
    let ms: i64 = int.parse().ok()?;
    let sub: i64 = format!("{:0<3}", frac.get(..3.min(frac.len())).unwrap_or(""))
        .parse()
        .ok()?;
    let micros = ms.checked_mul(1000)?.checked_add(sub)?;
    let micros = if d.is_negative() { -micros } else { micros };
    let secs = micros.div_euclid(1_000_000);
    let us = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, dd) = calendar::civil_from_days(days);
    if !(1..=294_276).contains(&y) {
        return None;
    }
    Some(format!(
        "{y:04}-{m:02}-{dd:02} {:02}:{:02}:{:02}.{us:06}+00",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    ))
}
