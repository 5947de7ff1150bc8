//! BSON → [`Value`]: how a MongoDB document becomes a Ferry row.
//!
//! Pure and I/O-free, so that every rule here is tested without a server.
//! The rules follow Ferry's hard rule that nothing is coerced silently:
//!
//! - Decimal128 becomes an exact [`Numeric`] (never `f64`), NaN and the
//!   infinities included, so that a transform can reject them explicitly.
//! - DateTime becomes timestamptz text that PostgreSQL reads back to the
//!   same millisecond; a DateTime PostgreSQL cannot hold is an error, which
//!   the source dead-letters, never a clamped value.
//! - Types PostgreSQL has no counterpart for (regex, JavaScript code,
//!   MinKey/MaxKey, DBPointer, symbol, undefined, the internal Timestamp)
//!   become their canonical Extended JSON, which keeps every bit.
//!
//! A field that is absent from a document and a field that holds BSON null
//! are different facts in MongoDB; [`field`] keeps them apart.

use std::fmt;

use bson::spec::BinarySubtype;
use bson::{Binary, Bson, Decimal128, Document};
use ferry_pipeline::calendar::civil_from_days;
use ferry_pipeline::value::{Numeric, TemporalKind, Value};

/// Milliseconds since the Unix epoch of PostgreSQL's lowest timestamptz,
/// `4714-11-24 00:00:00+00 BC` (Julian day 0, `MIN_TIMESTAMP` in
/// PostgreSQL's `datatype/timestamp.h`).
pub const PG_TIMESTAMPTZ_MIN_MILLIS: i64 = -210_866_803_200_000;

/// Milliseconds since the Unix epoch of `294277-01-01 00:00:00+00`, the
/// first instant past PostgreSQL's timestamptz range (`END_TIMESTAMP`):
/// the highest accepted value is one millisecond before.
pub const PG_TIMESTAMPTZ_END_MILLIS: i64 = 9_224_318_016_000_000;

const MILLIS_PER_DAY: i64 = 86_400_000;

/// Why a BSON value cannot become a [`Value`]. The source dead-letters the
/// event with this as the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BsonError {
    /// Where the value sits: field names and array indexes from the
    /// document's top level down (empty for a bare [`bson_to_value`]).
    pub path: Vec<String>,
    /// What is wrong with it.
    pub kind: BsonErrorKind,
}

/// The reasons a BSON value is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BsonErrorKind {
    /// A DateTime outside PostgreSQL's timestamptz range
    /// ([`PG_TIMESTAMPTZ_MIN_MILLIS`] .. [`PG_TIMESTAMPTZ_END_MILLIS`]).
    DateTimeOutOfRange {
        /// The BSON value: milliseconds since the Unix epoch.
        millis: i64,
    },
    /// A Decimal128 whose canonical text is not an exact decimal. Not
    /// expected from any Decimal128 (all of them fit), kept as an error so
    /// that a bson crate change could never turn into a wrong number.
    Decimal128 {
        /// The canonical text bson produced.
        text: String,
    },
}

impl BsonError {
    fn new(kind: BsonErrorKind) -> Self {
        BsonError {
            path: Vec::new(),
            kind,
        }
    }

    /// Prepends one path segment while the error travels up the document.
    fn at(mut self, segment: impl Into<String>) -> Self {
        self.path.insert(0, segment.into());
        self
    }
}

impl fmt::Display for BsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "field {:?}: ", self.path.join("."))?;
        }
        match &self.kind {
            BsonErrorKind::DateTimeOutOfRange { millis } => write!(
                f,
                "BSON datetime {millis} ms since 1970-01-01 is outside PostgreSQL's \
                 timestamptz range (4714-11-24 BC .. 294276-12-31 AD)"
            ),
            BsonErrorKind::Decimal128 { text } => {
                write!(f, "BSON Decimal128 {text:?} is not an exact decimal")
            }
        }
    }
}

impl std::error::Error for BsonError {}

/// Converts a whole document into named values, in the document's field
/// order.
///
/// Fails on the first value that cannot be converted; the error names its
/// path (`items.3.when`).
pub fn document_to_row(doc: &Document) -> Result<Vec<(String, Value)>, BsonError> {
    doc.iter()
        .map(|(name, b)| {
            bson_to_value(b)
                .map(|v| (name.clone(), v))
                .map_err(|e| e.at(name.as_str()))
        })
        .collect()
}

/// One top-level field of `doc`: `Ok(None)` when the document has no such
/// field, `Ok(Some(Value::Null))` when it holds BSON null.
///
/// MongoDB documents need not share fields, and an absent field is not a
/// null one (a `$set` of null differs from an `$unset`), so the caller
/// decides what absence means for its target column.
pub fn field(doc: &Document, name: &str) -> Result<Option<Value>, BsonError> {
    doc.get(name)
        .map(|b| bson_to_value(b).map_err(|e| e.at(name)))
        .transpose()
}

/// Converts one BSON value.
///
/// | BSON | [`Value`] |
/// |---|---|
/// | Double | `Float` (NaN, ±inf and -0 kept) |
/// | String | `Text` |
/// | Document | `Document` (field order kept) |
/// | Array | `Array` |
/// | Binary, subtype 3 or 4 with 16 bytes | `Uuid` (bytes as stored) |
/// | Binary, any other | `Bytes` (the subtype is not kept) |
/// | ObjectId | `ObjectId` |
/// | Boolean | `Bool` |
/// | DateTime | `Temporal(Timestamptz, "2024-01-02 03:04:05.678+00")` |
/// | Null | `Null` |
/// | Int32, Int64 | `Int` |
/// | Timestamp | `Json` `{"$timestamp":{"t":…,"i":…}}` |
/// | Decimal128 | `Numeric`, see [`decimal128_to_numeric`] |
/// | Regex, JavaScript code (with or without scope), Symbol, Undefined, MinKey, MaxKey, DBPointer | `Json`, canonical Extended JSON |
///
/// A DBRef is not a BSON type but a convention (a document with `$ref`,
/// `$id`, `$db`), so it arrives as a `Document` like any other.
pub fn bson_to_value(b: &Bson) -> Result<Value, BsonError> {
    Ok(match b {
        Bson::Double(f) => Value::Float(*f),
        Bson::String(s) => Value::Text(s.clone()),
        Bson::Document(d) => Value::Document(document_to_row(d)?),
        Bson::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| bson_to_value(item).map_err(|e| e.at(i.to_string())))
                .collect::<Result<_, _>>()?,
        ),
        Bson::Binary(bin) => binary_to_value(bin),
        Bson::ObjectId(id) => Value::ObjectId(id.bytes()),
        Bson::Boolean(v) => Value::Bool(*v),
        Bson::DateTime(dt) => Value::Temporal(
            TemporalKind::Timestamptz,
            timestamptz_text(dt.timestamp_millis())?,
        ),
        Bson::Null => Value::Null,
        Bson::Int32(i) => Value::Int(i64::from(*i)),
        Bson::Int64(i) => Value::Int(*i),
        // Written by hand rather than through Extended JSON: this is the
        // canonical form, and it is the one type here with a fixed shape.
        Bson::Timestamp(ts) => Value::Json(format!(
            r#"{{"$timestamp":{{"t":{},"i":{}}}}}"#,
            ts.time, ts.increment
        )),
        Bson::Decimal128(d) => Value::Numeric(decimal128_to_numeric(*d)?),
        Bson::RegularExpression(_)
        | Bson::JavaScriptCode(_)
        | Bson::JavaScriptCodeWithScope(_)
        | Bson::Symbol(_)
        | Bson::Undefined
        | Bson::MaxKey
        | Bson::MinKey
        | Bson::DbPointer(_) => Value::Json(b.clone().into_canonical_extjson().to_string()),
    })
}

fn binary_to_value(bin: &Binary) -> Value {
    match (bin.subtype, <[u8; 16]>::try_from(bin.bytes.as_slice())) {
        // Subtype 3 is the legacy UUID, whose byte order depended on the
        // driver that wrote it (Java and C# reversed halves); the bytes are
        // taken as stored, which is what the Python and Rust drivers write.
        (BinarySubtype::Uuid | BinarySubtype::UuidOld, Ok(bytes)) => {
            Value::Uuid(bson::Uuid::from_bytes(bytes).to_uuid_1())
        }
        _ => Value::Bytes(bin.bytes.clone()),
    }
}

/// A Decimal128 as an exact [`Numeric`].
///
/// Goes through bson's canonical text (the IEEE 754-2008 / MongoDB
/// string: `1E+2`, `1.000E-10`, `-0`, `NaN`, `Infinity`), which carries the
/// coefficient and exponent exactly, and parses it with Ferry's exact
/// decimal parser; no binary floating point is involved.
///
/// - Every finite Decimal128 is kept exact with its scale: the coefficient
///   has at most 34 digits and the exponent lies in -6176..=6111, so a value
///   has at most 6145 digits before the point (`1E+6144`) and 6176 after
///   it, both inside PostgreSQL numeric's limits (131072 and 16383). Large
///   exponents are expanded into zeros: `1E+3` is `1000`, `0E-6176` is zero
///   with scale 6176, `0E+3` is `0`.
/// - The sign of a zero is dropped (`-0`, `-0E+3` become `0`): PostgreSQL's
///   numeric has no negative zero, and MongoDB compares `-0` equal to `0`.
/// - NaN (quiet or signalling, any sign) becomes [`Numeric::NaN`], the
///   infinities [`Numeric::PosInfinity`] / [`Numeric::NegInfinity`].
/// - A non-canonical encoding (coefficient above 10^34 - 1) is zero, as
///   the IEEE standard and the BSON Decimal128 specification define it.
pub fn decimal128_to_numeric(d: Decimal128) -> Result<Numeric, BsonError> {
    let text = d.to_string();
    text.parse::<Numeric>()
        .map_err(|_| BsonError::new(BsonErrorKind::Decimal128 { text }))
}

/// The PostgreSQL timestamptz text of a BSON DateTime (milliseconds since
/// the Unix epoch, UTC), in the form PostgreSQL itself prints with
/// `DateStyle=ISO, TimeZone=UTC`: `2024-01-02 03:04:05.678+00`, trailing
/// zeros of the fraction dropped, the fraction omitted when zero, years
/// before 1 AD as `0001-…+00 BC` (year 0 is 1 BC).
///
/// The calendar is the proleptic Gregorian one (BSON's and PostgreSQL's),
/// computed by [`ferry_pipeline::calendar`] instead of with chrono because
/// chrono stops at year ±262000 or so while a DateTime can name any
/// millisecond of ±292 million years. A value outside PostgreSQL's range
/// ([`PG_TIMESTAMPTZ_MIN_MILLIS`]..[`PG_TIMESTAMPTZ_END_MILLIS`]) is
/// [`BsonErrorKind::DateTimeOutOfRange`], never clamped.
pub fn timestamptz_text(millis: i64) -> Result<String, BsonError> {
    if !(PG_TIMESTAMPTZ_MIN_MILLIS..PG_TIMESTAMPTZ_END_MILLIS).contains(&millis) {
        return Err(BsonError::new(BsonErrorKind::DateTimeOutOfRange { millis }));
    }
    let days = millis.div_euclid(MILLIS_PER_DAY);
    let ms_of_day = millis.rem_euclid(MILLIS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60);
    let (second, ms) = (ms_of_day / 1000 % 60, ms_of_day % 1000);
    // PostgreSQL counts BC years from 1: astronomical year 0 is 1 BC.
    let (shown_year, era) = if year <= 0 {
        (1 - year, " BC")
    } else {
        (year, "")
    };
    let mut text = format!("{shown_year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}");
    if ms != 0 {
        let frac = format!("{ms:03}");
        text.push('.');
        text.push_str(frac.trim_end_matches('0'));
    }
    text.push_str("+00");
    text.push_str(era);
    Ok(text)
}

#[cfg(test)]
mod tests;
