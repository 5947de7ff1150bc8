//! PostgreSQL text format → [`Value`].
//!
//! Owns the reading of the text that PostgreSQL's output functions produce,
//! as it arrives in pgoutput tuples and in `COPY ... TO STDOUT` rows: the
//! per-type mapping by OID ([`decode_value`]), array literals
//! ([`parse_array_literal`]) and the COPY text row format
//! ([`split_copy_text_row`]). Pure and I/O-free.
//!
//! It relies on the session settings the source pins (`DateStyle=ISO`,
//! `TimeZone=UTC`, `bytea_output=hex`, `extra_float_digits=1`): temporal
//! text is kept as the source printed it, and floats print as the shortest
//! text that reads back to the same binary value. Anything it cannot map
//! with certainty travels as [`Value::Text`], because the sink can cast text
//! back exactly while a wrong structured guess would corrupt data.

use ferry_pipeline::value::{Numeric, TemporalKind, Value};

/// A column's type as far as decoding needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PgType {
    /// The type's OID (`pg_type.oid`).
    pub oid: u32,
    /// The element type's OID for array types (`pg_type.typelem` of a type
    /// whose category is `A`), `None` otherwise.
    pub elem_oid: Option<u32>,
}

impl PgType {
    /// A scalar (non-array) type.
    pub fn scalar(oid: u32) -> Self {
        PgType {
            oid,
            elem_oid: None,
        }
    }

    /// An array type whose elements have type `elem_oid`.
    pub fn array(oid: u32, elem_oid: u32) -> Self {
        PgType {
            oid,
            elem_oid: Some(elem_oid),
        }
    }
}

/// Built-in type OIDs this module maps to something other than text.
pub mod oid {
    /// `bool`.
    pub const BOOL: u32 = 16;
    /// `bytea`.
    pub const BYTEA: u32 = 17;
    /// `name`.
    pub const NAME: u32 = 19;
    /// `int8`.
    pub const INT8: u32 = 20;
    /// `int2`.
    pub const INT2: u32 = 21;
    /// `int4`.
    pub const INT4: u32 = 23;
    /// `text`.
    pub const TEXT: u32 = 25;
    /// `oid`.
    pub const OID: u32 = 26;
    /// `json`.
    pub const JSON: u32 = 114;
    /// `float4`.
    pub const FLOAT4: u32 = 700;
    /// `float8`.
    pub const FLOAT8: u32 = 701;
    /// `bpchar` (`char(n)`).
    pub const BPCHAR: u32 = 1042;
    /// `varchar`.
    pub const VARCHAR: u32 = 1043;
    /// `date`.
    pub const DATE: u32 = 1082;
    /// `time`.
    pub const TIME: u32 = 1083;
    /// `timestamp`.
    pub const TIMESTAMP: u32 = 1114;
    /// `timestamptz`.
    pub const TIMESTAMPTZ: u32 = 1184;
    /// `interval`.
    pub const INTERVAL: u32 = 1186;
    /// `timetz`.
    pub const TIMETZ: u32 = 1266;
    /// `numeric`.
    pub const NUMERIC: u32 = 1700;
    /// `uuid`.
    pub const UUID: u32 = 2950;
    /// `jsonb`.
    pub const JSONB: u32 = 3802;
}

/// One element of a parsed array literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArrayItem {
    /// An unquoted `NULL`.
    Null,
    /// An element's text, quotes removed and escapes resolved.
    Elem(String),
    /// A sub-array of a multi-dimensional array.
    Nested(Vec<ArrayItem>),
}

/// Why a text could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// The text is not a valid value of the type.
    #[error("invalid {type_name} (oid {oid}) text: {text:?}")]
    InvalidScalar {
        /// The type's OID.
        oid: u32,
        /// The type's name, for the message.
        type_name: &'static str,
        /// The offending text (cut to 100 characters).
        text: String,
    },
    /// The array literal starts with explicit bounds (`[0:1]={1,2}`), which
    /// [`Value::Array`] cannot represent.
    #[error("array literal has explicit bounds")]
    ArrayBounds,
    /// The array literal is malformed.
    #[error("malformed array literal at byte {pos}: {reason}")]
    MalformedArray {
        /// Byte offset where parsing failed.
        pos: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// The COPY row is malformed.
    #[error("malformed COPY text row at byte {pos}: {reason}")]
    MalformedCopyRow {
        /// Byte offset where parsing failed.
        pos: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// A COPY field is not valid UTF-8 once its escapes are resolved.
    #[error("COPY text field {field} is not valid UTF-8")]
    CopyFieldUtf8 {
        /// 0-based index of the field in the row.
        field: usize,
    },
}

/// Decodes one value from its PostgreSQL text output.
///
/// Unknown types, and arrays whose literal or element type Ferry cannot
/// model, come back as [`Value::Text`] with the text unchanged. An error
/// means the text is not what PostgreSQL prints for a type Ferry does
/// model (e.g. `int4` text that is not an integer).
pub fn decode_value(ty: &PgType, text: &str) -> Result<Value, TextError> {
    match ty.elem_oid {
        Some(elem) => decode_array(elem, text),
        None => decode_scalar(ty.oid, text),
    }
}

/// Whether [`decode_value`] maps `oid` to something other than text when
/// it is an array's element type (text types count: their arrays still
/// become [`Value::Array`]).
fn is_modelled_scalar(oid: u32) -> bool {
    use oid::*;
    matches!(
        oid,
        BOOL | BYTEA
            | NAME
            | INT8
            | INT2
            | INT4
            | TEXT
            | OID
            | JSON
            | FLOAT4
            | FLOAT8
            | BPCHAR
            | VARCHAR
            | DATE
            | TIME
            | TIMESTAMP
            | TIMESTAMPTZ
            | INTERVAL
            | TIMETZ
            | NUMERIC
            | UUID
            | JSONB
    )
}

fn decode_array(elem: u32, text: &str) -> Result<Value, TextError> {
    // Exactness over structure: an element type we do not model (composite,
    // range, box with its ';' delimiter, ...) or a literal we cannot
    // represent travels as text the sink can cast back.
    if !is_modelled_scalar(elem) {
        return Ok(Value::Text(text.to_owned()));
    }
    let items = match parse_array_literal(text) {
        Ok(items) => items,
        Err(_) => return Ok(Value::Text(text.to_owned())),
    };
    // Element errors are real errors, like for a scalar column: the text
    // parsed as an array of this type, so a bad element is corrupt input.
    items_to_values(elem, items).map(Value::Array)
}

fn items_to_values(elem: u32, items: Vec<ArrayItem>) -> Result<Vec<Value>, TextError> {
    items
        .into_iter()
        .map(|item| match item {
            ArrayItem::Null => Ok(Value::Null),
            ArrayItem::Elem(s) => decode_scalar(elem, &s),
            ArrayItem::Nested(sub) => items_to_values(elem, sub).map(Value::Array),
        })
        .collect()
}

fn decode_scalar(oid: u32, text: &str) -> Result<Value, TextError> {
    use oid::*;
    let invalid = |type_name: &'static str| TextError::InvalidScalar {
        oid,
        type_name,
        text: text.chars().take(100).collect(),
    };
    Ok(match oid {
        // boolout prints exactly `t` or `f`.
        BOOL => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => return Err(invalid("bool")),
        },
        INT2 | INT4 | INT8 => Value::Int(parse_int(text).ok_or_else(|| invalid("integer"))?),
        // oid is unsigned 32-bit: always fits an i64.
        OID => Value::Int(
            text.parse::<u32>()
                .map(i64::from)
                .map_err(|_| invalid("oid"))?,
        ),
        FLOAT4 | FLOAT8 => Value::Float(parse_float(text).ok_or_else(|| invalid("float"))?),
        NUMERIC => Value::Numeric(text.parse::<Numeric>().map_err(|_| invalid("numeric"))?),
        JSON | JSONB => Value::Json(text.to_owned()),
        UUID => Value::Uuid(text.parse().map_err(|_| invalid("uuid"))?),
        BYTEA => Value::Bytes(parse_bytea(text).ok_or_else(|| invalid("bytea"))?),
        DATE => Value::Temporal(TemporalKind::Date, text.to_owned()),
        TIME => Value::Temporal(TemporalKind::Time, text.to_owned()),
        TIMETZ => Value::Temporal(TemporalKind::TimeTz, text.to_owned()),
        TIMESTAMP => Value::Temporal(TemporalKind::Timestamp, text.to_owned()),
        TIMESTAMPTZ => Value::Temporal(TemporalKind::Timestamptz, text.to_owned()),
        INTERVAL => Value::Temporal(TemporalKind::Interval, text.to_owned()),
        // text, varchar, bpchar (trailing spaces are part of the value),
        // name, and every type Ferry does not model.
        _ => Value::Text(text.to_owned()),
    })
}

/// Integers as int2out/int4out/int8out print them: an optional `-` and
/// decimal digits. Stricter than `str::parse`, which also takes a `+`.
fn parse_int(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// float4out/float8out text. The specials are matched by hand because
/// `str::parse` spells them differently (`inf`) and accepts forms
/// PostgreSQL never prints. float4 is read as f64 straight from its decimal
/// text so that `0.1` stays `0.1` (and prints back as `0.1`, which float4in
/// rounds to the same float4).
fn parse_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => {
            let body = text.strip_prefix('-').unwrap_or(text);
            // Only digits, point and exponent: rules out Rust's own
            // `inf`/`nan` spellings.
            if !body
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
            {
                return None;
            }
            text.parse::<f64>().ok().filter(|f| f.is_finite())
        }
    }
}

/// byteaout text: hex (`\x0a1b`, what the pinned `bytea_output=hex`
/// gives) or, should a session ever print it, the escape format.
fn parse_bytea(text: &str) -> Option<Vec<u8>> {
    if let Some(hex) = text.strip_prefix("\\x") {
        let hex = hex.as_bytes();
        if hex.len() % 2 != 0 {
            return None;
        }
        return hex
            .chunks_exact(2)
            .map(|pair| Some(hex_val(pair[0])? << 4 | hex_val(pair[1])?))
            .collect();
    }
    // Escape format: `\\` is a backslash, `\ooo` an octal byte, anything
    // else stands for itself.
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let oct = b.get(i + 1..i + 4)?;
            if !(b'0'..=b'3').contains(&oct[0])
                || !oct[1..].iter().all(|c| (b'0'..=b'7').contains(c))
            {
                return None;
            }
            out.push((oct[0] - b'0') << 6 | (oct[1] - b'0') << 3 | (oct[2] - b'0'));
            i += 4;
        }
    }
    Some(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// PostgreSQL's MAXDIM: deeper literals are not valid arrays, and the
/// bound keeps hostile input from recursing without end.
const MAX_ARRAY_DEPTH: usize = 6;

/// Parses an array literal as array_out prints it (and as array_in reads
/// it, with `,` as delimiter): `{}`, unquoted `NULL`, quoted elements with
/// `\"` and `\\` escapes, nested `{{1,2},{3,4}}`.
///
/// A literal with explicit bounds (`[0:1]={1,2}`) is
/// [`TextError::ArrayBounds`], so that the caller can fall back to text.
pub fn parse_array_literal(text: &str) -> Result<Vec<ArrayItem>, TextError> {
    let mut p = ArrayParser {
        s: text.as_bytes(),
        pos: 0,
    };
    p.skip_ws();
    if p.peek() == Some(b'[') {
        return Err(TextError::ArrayBounds);
    }
    let items = p.array(1)?;
    p.skip_ws();
    if p.pos != p.s.len() {
        return Err(p.err("junk after closing brace"));
    }
    Ok(items)
}

struct ArrayParser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl ArrayParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn err(&self, reason: &'static str) -> TextError {
        TextError::MalformedArray {
            pos: self.pos,
            reason,
        }
    }

    /// array_in skips the same whitespace as C's `isspace`.
    fn skip_ws(&mut self) {
        while matches!(
            self.peek(),
            Some(b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
        ) {
            self.pos += 1;
        }
    }

    /// `{ item, item, ... }`, the cursor on the `{`.
    fn array(&mut self, depth: usize) -> Result<Vec<ArrayItem>, TextError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(self.err("more than 6 dimensions"));
        }
        if self.peek() != Some(b'{') {
            return Err(self.err("expected '{'"));
        }
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(items);
        }
        loop {
            self.skip_ws();
            let item = match self.peek() {
                Some(b'{') => ArrayItem::Nested(self.array(depth + 1)?),
                Some(b'"') => ArrayItem::Elem(self.quoted()?),
                _ => self.unquoted()?,
            };
            // A level holds either sub-arrays or elements, never both:
            // PostgreSQL arrays are rectangular.
            if let Some(first) = items.first() {
                if matches!(first, ArrayItem::Nested(_)) != matches!(item, ArrayItem::Nested(_)) {
                    return Err(self.err("sub-arrays mixed with elements"));
                }
            }
            items.push(item);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(items);
                }
                Some(_) => return Err(self.err("expected ',' or '}'")),
                None => return Err(self.err("unterminated array")),
            }
        }
    }

    /// `"..."`, the cursor on the opening quote; a backslash takes the next
    /// character literally.
    fn quoted(&mut self) -> Result<String, TextError> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated quoted element")),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    let Some(&c) = self.s.get(self.pos + 1) else {
                        return Err(self.err("backslash at end of literal"));
                    };
                    out.push(c);
                    self.pos += 2;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
        self.to_utf8(out)
    }

    /// An unquoted element up to `,` or `}`: surrounding whitespace is not
    /// part of it (unless backslash-escaped), and a bare `NULL` in any case
    /// is SQL NULL.
    fn unquoted(&mut self) -> Result<ArrayItem, TextError> {
        let mut out = Vec::new();
        // Length of `out` up to its last character that must be kept:
        // trailing unescaped whitespace is dropped.
        let mut keep = 0;
        let mut escaped = false;
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated array")),
                Some(b',' | b'}') => break,
                Some(b'{' | b'"') => return Err(self.err("unexpected character in element")),
                Some(b'\\') => {
                    let Some(&c) = self.s.get(self.pos + 1) else {
                        return Err(self.err("backslash at end of literal"));
                    };
                    out.push(c);
                    keep = out.len();
                    escaped = true;
                    self.pos += 2;
                }
                Some(c) => {
                    out.push(c);
                    if !matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
                        keep = out.len();
                    }
                    self.pos += 1;
                }
            }
        }
        out.truncate(keep);
        if out.is_empty() && !escaped {
            return Err(self.err("empty unquoted element"));
        }
        if !escaped && out.eq_ignore_ascii_case(b"NULL") {
            return Ok(ArrayItem::Null);
        }
        self.to_utf8(out).map(ArrayItem::Elem)
    }

    fn to_utf8(&self, bytes: Vec<u8>) -> Result<String, TextError> {
        // Escapes only ever drop ASCII backslashes from valid UTF-8 input,
        // so this fails only on a backslash before a UTF-8 continuation.
        String::from_utf8(bytes).map_err(|_| self.err("element is not valid UTF-8"))
    }
}

/// Splits one line of `COPY ... TO STDOUT` text format (without its
/// trailing newline) into fields: `None` for `\N`, otherwise the field with
/// its backslash escapes resolved (`\b \f \n \r \t \v \\`, `\ddd` octal,
/// `\xhh` hex; a backslash before any other character stands for that
/// character, as in COPY FROM).
///
/// An empty line is one empty field: only the caller knows the column
/// count. The end-of-data marker `\.` is the caller's to recognise before
/// calling this.
pub fn split_copy_text_row(line: &[u8]) -> Result<Vec<Option<String>>, TextError> {
    line.split(|&b| b == b'\t')
        .enumerate()
        .scan(0usize, |start, (field, raw)| {
            let at = *start;
            *start += raw.len() + 1;
            Some((field, at, raw))
        })
        .map(|(field, at, raw)| {
            // `\N` means NULL only as the whole raw field: an escaped
            // backslash followed by N (`\\N`) is the text `\N`.
            if raw == b"\\N" {
                return Ok(None);
            }
            let bytes = unescape_copy_field(raw, at)?;
            String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| TextError::CopyFieldUtf8 { field })
        })
        .collect()
}

/// Resolves COPY text escapes the way COPY FROM does (`at` is the field's
/// offset in the line, for errors).
fn unescape_copy_field(raw: &[u8], at: usize) -> Result<Vec<u8>, TextError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let Some(&e) = raw.get(i) else {
            return Err(TextError::MalformedCopyRow {
                pos: at + i - 1,
                reason: "backslash at end of field",
            });
        };
        i += 1;
        let byte = match e {
            b'0'..=b'7' => {
                // Up to three octal digits; like COPY, keep the low 8 bits
                // of larger values such as `\777`.
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v << 3 | u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                (v & 0xff) as u8
            }
            // `\x` takes one or two hex digits; with none it is a plain `x`.
            b'x' => match raw.get(i).and_then(|&d| hex_val(d)) {
                Some(hi) => {
                    i += 1;
                    match raw.get(i).and_then(|&d| hex_val(d)) {
                        Some(lo) => {
                            i += 1;
                            hi << 4 | lo
                        }
                        None => hi,
                    }
                }
                None => b'x',
            },
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 0x0b,
            other => other,
        };
        out.push(byte);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_pipeline::value::Decimal;
    use proptest::prelude::*;

    fn s(oid: u32, text: &str) -> Value {
        decode_value(&PgType::scalar(oid), text).unwrap()
    }

    fn a(elem: u32, text: &str) -> Value {
        decode_value(&PgType::array(0, elem), text).unwrap()
    }

    fn elem(s: &str) -> ArrayItem {
        ArrayItem::Elem(s.to_owned())
    }

    fn txt(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    #[test]
    fn bools() {
        assert_eq!(s(16, "t"), Value::Bool(true));
        assert_eq!(s(16, "f"), Value::Bool(false));
        for bad in ["true", "", "T", "1"] {
            assert!(decode_value(&PgType::scalar(16), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn integers() {
        assert_eq!(s(21, "-32768"), Value::Int(-32768));
        assert_eq!(s(23, "2147483647"), Value::Int(2147483647));
        assert_eq!(s(20, "-9223372036854775808"), Value::Int(i64::MIN));
        assert_eq!(s(20, "9223372036854775807"), Value::Int(i64::MAX));
        assert_eq!(s(26, "4294967295"), Value::Int(4294967295));
        for bad in ["", "-", "+1", " 1", "1.0", "9223372036854775808", "abc"] {
            assert!(decode_value(&PgType::scalar(20), bad).is_err(), "{bad}");
        }
        assert!(decode_value(&PgType::scalar(26), "-1").is_err());
        assert!(decode_value(&PgType::scalar(26), "4294967296").is_err());
    }

    #[test]
    fn floats() {
        assert_eq!(s(701, "0.1"), Value::Float(0.1));
        assert_eq!(s(701, "1e+300"), Value::Float(1e300));
        assert_eq!(s(701, "1e300"), Value::Float(1e300));
        assert_eq!(s(701, "-1.5e-300"), Value::Float(-1.5e-300));
        assert_eq!(s(701, "5e-324"), Value::Float(5e-324));
        assert_eq!(s(701, "1.7976931348623157e+308"), Value::Float(f64::MAX));
        assert_eq!(s(701, "Infinity"), Value::Float(f64::INFINITY));
        assert_eq!(s(701, "-Infinity"), Value::Float(f64::NEG_INFINITY));
        let Value::Float(nan) = s(701, "NaN") else {
            panic!()
        };
        assert!(nan.is_nan());
        let Value::Float(neg_zero) = s(701, "-0") else {
            panic!()
        };
        assert!(neg_zero == 0.0 && neg_zero.is_sign_negative());
        // float4 keeps its decimal meaning rather than the widened float4.
        assert_eq!(s(700, "0.1"), Value::Float(0.1));
        assert_eq!(s(700, "3.4028235e+38"), Value::Float(3.4028235e38));
        for bad in ["inf", "nan", "infinity", "", "1e999", "0x1", "1,5"] {
            assert!(decode_value(&PgType::scalar(701), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numerics() {
        let n = |t: &str| match s(1700, t) {
            Value::Numeric(n) => n.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(n("1.50"), "1.50");
        assert_eq!(n("-0.000000001"), "-0.000000001");
        assert_eq!(
            n("123456789012345678901234567890.000000000000000000001"),
            "123456789012345678901234567890.000000000000000000001"
        );
        assert_eq!(s(1700, "NaN"), Value::Numeric(Numeric::NaN));
        assert_eq!(s(1700, "Infinity"), Value::Numeric(Numeric::PosInfinity));
        assert_eq!(s(1700, "-Infinity"), Value::Numeric(Numeric::NegInfinity));
        assert_eq!(
            s(1700, "42"),
            Value::Numeric(Numeric::Finite("42".parse::<Decimal>().unwrap()))
        );
        assert!(decode_value(&PgType::scalar(1700), "1.2.3").is_err());
    }

    #[test]
    fn texts_stay_exact() {
        assert_eq!(s(25, "héllo\twörld\n"), txt("héllo\twörld\n"));
        assert_eq!(s(1043, ""), txt(""));
        assert_eq!(s(1042, "ab   "), txt("ab   "));
        assert_eq!(s(19, "pg_class"), txt("pg_class"));
        // Unknown types: enums, ranges, geometric, ...
        assert_eq!(s(90_001, "happy"), txt("happy"));
        assert_eq!(s(3904, "[1,5)"), txt("[1,5)"));
        assert_eq!(s(600, "(1,2)"), txt("(1,2)"));
    }

    #[test]
    fn json_as_is() {
        assert_eq!(
            s(114, r#"{"b": 1,  "a": [1.0]}"#),
            Value::Json(r#"{"b": 1,  "a": [1.0]}"#.into())
        );
        assert_eq!(s(3802, r#"{"a": 1}"#), Value::Json(r#"{"a": 1}"#.into()));
    }

    #[test]
    fn uuids() {
        let v = s(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        let Value::Uuid(u) = v else { panic!() };
        assert_eq!(u.to_string(), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert!(decode_value(&PgType::scalar(2950), "not-a-uuid").is_err());
    }

    #[test]
    fn byteas() {
        assert_eq!(s(17, "\\x"), Value::Bytes(vec![]));
        assert_eq!(
            s(17, "\\x00ff7fAB"),
            Value::Bytes(vec![0x00, 0xff, 0x7f, 0xab])
        );
        assert_eq!(
            s(17, "ab\\\\c\\000\\377"),
            Value::Bytes(b"ab\\c\x00\xff".to_vec())
        );
        for bad in ["\\x0", "\\xzz", "\\", "\\400", "\\12"] {
            assert!(decode_value(&PgType::scalar(17), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn temporals_keep_text() {
        let cases = [
            (1082, TemporalKind::Date, "2024-02-29"),
            (1082, TemporalKind::Date, "infinity"),
            (1082, TemporalKind::Date, "4713-01-01 BC"),
            (1083, TemporalKind::Time, "24:00:00"),
            (1266, TemporalKind::TimeTz, "12:34:56.789+05:30"),
            (
                1114,
                TemporalKind::Timestamp,
                "294276-12-31 23:59:59.999999",
            ),
            (1184, TemporalKind::Timestamptz, "2024-01-01 00:00:00+00"),
            (
                1186,
                TemporalKind::Interval,
                "1 year 2 mons -3 days 04:05:06.7",
            ),
        ];
        for (oid, kind, text) in cases {
            assert_eq!(s(oid, text), Value::Temporal(kind, text.into()));
        }
    }

    #[test]
    fn array_literals() {
        assert_eq!(parse_array_literal("{}").unwrap(), vec![]);
        assert_eq!(parse_array_literal(" { } ").unwrap(), vec![]);
        assert_eq!(
            parse_array_literal("{1,NULL,null,\"NULL\",\"\"}").unwrap(),
            vec![
                elem("1"),
                ArrayItem::Null,
                ArrayItem::Null,
                elem("NULL"),
                elem("")
            ]
        );
        assert_eq!(
            parse_array_literal(r#"{"a\"b","c\\d","x,y","{}"," sp "}"#).unwrap(),
            vec![
                elem("a\"b"),
                elem("c\\d"),
                elem("x,y"),
                elem("{}"),
                elem(" sp ")
            ]
        );
        assert_eq!(
            parse_array_literal("{{1,2},{3,4}}").unwrap(),
            vec![
                ArrayItem::Nested(vec![elem("1"), elem("2")]),
                ArrayItem::Nested(vec![elem("3"), elem("4")]),
            ]
        );
        assert_eq!(
            parse_array_literal("{{{a}},{{NULL}}}").unwrap(),
            vec![
                ArrayItem::Nested(vec![ArrayItem::Nested(vec![elem("a")])]),
                ArrayItem::Nested(vec![ArrayItem::Nested(vec![ArrayItem::Null])]),
            ]
        );
        // array_in's whitespace and escape rules for unquoted elements.
        assert_eq!(
            parse_array_literal("{ a b , c\\ ,\\NULL, héllo }").unwrap(),
            vec![elem("a b"), elem("c "), elem("NULL"), elem("héllo")]
        );
    }

    #[test]
    fn array_literal_errors() {
        assert_eq!(
            parse_array_literal("[0:1]={1,2}").unwrap_err(),
            TextError::ArrayBounds
        );
        assert_eq!(
            parse_array_literal("[1:1][1:2]={{1,2}}").unwrap_err(),
            TextError::ArrayBounds
        );
        for bad in [
            "",
            "{",
            "}",
            "{1",
            "{1,}",
            "{,}",
            "{1 2}x",
            "{\"a}",
            "{a\"b\"}",
            "{{1},2}",
            "{1,{2}}",
            "1,2",
            "{a\\",
            "{{{{{{{1}}}}}}}",
            "{1}{2}",
        ] {
            assert!(
                matches!(
                    parse_array_literal(bad),
                    Err(TextError::MalformedArray { .. })
                ),
                "{bad:?} -> {:?}",
                parse_array_literal(bad)
            );
        }
        // Six dimensions is PostgreSQL's maximum, and fine.
        assert!(parse_array_literal("{{{{{{1}}}}}}").is_ok());
    }

    #[test]
    fn arrays_decode_elements() {
        assert_eq!(
            a(23, "{1,NULL,-3}"),
            Value::Array(vec![Value::Int(1), Value::Null, Value::Int(-3)])
        );
        assert_eq!(a(23, "{}"), Value::Array(vec![]));
        assert_eq!(
            a(23, "{{1,2},{3,4}}"),
            Value::Array(vec![
                Value::Array(vec![Value::Int(1), Value::Int(2)]),
                Value::Array(vec![Value::Int(3), Value::Int(4)]),
            ])
        );
        assert_eq!(
            a(16, "{t,f}"),
            Value::Array(vec![Value::Bool(true), Value::Bool(false)])
        );
        assert_eq!(
            a(1042, r#"{"a  ","NULL",NULL}"#),
            Value::Array(vec![txt("a  "), txt("NULL"), Value::Null])
        );
        assert_eq!(
            a(17, r#"{"\\x0102",NULL}"#),
            Value::Array(vec![Value::Bytes(vec![1, 2]), Value::Null])
        );
        assert_eq!(
            a(3802, r#"{"{\"a\": 1}","[1, 2]"}"#),
            Value::Array(vec![
                Value::Json(r#"{"a": 1}"#.into()),
                Value::Json("[1, 2]".into())
            ])
        );
        assert_eq!(
            a(1184, r#"{"2024-01-01 00:00:00+00",infinity}"#),
            Value::Array(vec![
                Value::Temporal(TemporalKind::Timestamptz, "2024-01-01 00:00:00+00".into()),
                Value::Temporal(TemporalKind::Timestamptz, "infinity".into()),
            ])
        );
        let Value::Array(floats) = a(701, "{NaN,-Infinity,1e-300}") else {
            panic!("not an array")
        };
        assert!(matches!(floats[0], Value::Float(f) if f.is_nan()));
        assert_eq!(
            floats[1..],
            [Value::Float(f64::NEG_INFINITY), Value::Float(1e-300)]
        );
        // A bad element of a modelled type is an error, as for a scalar.
        assert!(decode_value(&PgType::array(1007, 23), "{1,x}").is_err());
    }

    #[test]
    fn arrays_fall_back_to_text() {
        // Explicit bounds, unparseable literal, unmodelled element types.
        for (elem, text) in [
            (23, "[0:1]={1,2}"),
            (23, "{1,2"),
            (90_001, "{happy,sad}"),
            (2249, r#"{"(1,x)","(2,y)"}"#),
            (603, "{(1,1),(0,0);(2,2),(1,1)}"),
            (3904, r#"{"[1,5)",empty}"#),
        ] {
            assert_eq!(a(elem, text), txt(text), "{text}");
        }
    }

    /// The exact strings the sink's `to_pg_text` prints, read back here.
    #[test]
    fn reads_what_the_sink_writes() {
        assert_eq!(s(701, "1e300"), Value::Float(1e300));
        assert_eq!(s(701, "1e-7"), Value::Float(1e-7));
        assert_eq!(
            s(701, "1.2345678901234568e-300"),
            Value::Float(1.2345678901234568e-300)
        );
        assert_eq!(s(701, "123456.789"), Value::Float(123456.789));
        assert_eq!(s(701, "0.30000000000000004"), Value::Float(0.1 + 0.2));
        assert_eq!(
            a(25, r#"{"a\"b","c\\d",NULL,"NULL","","x,y","{}"," "}"#),
            Value::Array(vec![
                txt("a\"b"),
                txt("c\\d"),
                Value::Null,
                txt("NULL"),
                txt(""),
                txt("x,y"),
                txt("{}"),
                txt(" "),
            ])
        );
        assert_eq!(
            a(20, r#"{{"1","2"},{"3",NULL}}"#),
            Value::Array(vec![
                Value::Array(vec![Value::Int(1), Value::Int(2)]),
                Value::Array(vec![Value::Int(3), Value::Null]),
            ])
        );
        assert_eq!(
            a(17, r#"{"\\x00ff"}"#),
            Value::Array(vec![Value::Bytes(vec![0, 0xff])])
        );
        assert_eq!(
            a(1700, r#"{"1.50","NaN","-Infinity"}"#),
            Value::Array(vec![
                s(1700, "1.50"),
                Value::Numeric(Numeric::NaN),
                Value::Numeric(Numeric::NegInfinity)
            ])
        );
        assert_eq!(
            a(2950, r#"{"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}"#),
            Value::Array(vec![s(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")])
        );
        assert_eq!(
            a(16, r#"{"t","f"}"#),
            Value::Array(vec![Value::Bool(true), Value::Bool(false)])
        );
    }

    #[test]
    fn copy_rows() {
        assert_eq!(
            split_copy_text_row(b"1\t\\N\tabc\t").unwrap(),
            vec![Some("1".into()), None, Some("abc".into()), Some("".into())]
        );
        assert_eq!(split_copy_text_row(b"").unwrap(), vec![Some(String::new())]);
        assert_eq!(
            split_copy_text_row(b"\\b\\f\\n\\r\\t\\v\\\\").unwrap(),
            vec![Some("\x08\x0c\n\r\t\x0b\\".into())]
        );
        // `\\N` is the text `\N`, and `\N` inside a longer field is `N`.
        assert_eq!(
            split_copy_text_row(b"\\\\N\tx\\Ny").unwrap(),
            vec![Some("\\N".into()), Some("xNy".into())]
        );
        // Octal: one to three digits, low 8 bits kept; hex: one or two.
        assert_eq!(
            split_copy_text_row(b"\\101\\60\\0\\1018\\x41\\x4\\xg\\z\\.").unwrap(),
            vec![Some("A0\0A8A\x04xgz.".into())]
        );
        assert_eq!(
            split_copy_text_row(b"\\303\\251\t\\xc3\\xa9\th\xc3\xa9").unwrap(),
            vec![Some("é".into()), Some("é".into()), Some("hé".into())]
        );
        // Octal values past 255 keep their low 8 bits: 0o501 is 'A'.
        assert_eq!(
            split_copy_text_row(b"\\501").unwrap(),
            vec![Some("A".into())]
        );
    }

    #[test]
    fn copy_row_errors() {
        assert_eq!(
            split_copy_text_row(b"ab\tc\\").unwrap_err(),
            TextError::MalformedCopyRow {
                pos: 4,
                reason: "backslash at end of field"
            }
        );
        assert_eq!(
            split_copy_text_row(b"ok\t\\377").unwrap_err(),
            TextError::CopyFieldUtf8 { field: 1 }
        );
    }

    /// COPY TO's escaping of a field, for the round-trip property.
    fn copy_escape(field: &str) -> String {
        let mut out = String::new();
        for c in field.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\x08' => out.push_str("\\b"),
                '\x0b' => out.push_str("\\v"),
                '\x0c' => out.push_str("\\f"),
                c => out.push(c),
            }
        }
        out
    }

    /// array_out-style quoting (every element quoted), as the sink does.
    fn array_quote(items: &[Option<String>]) -> String {
        let parts: Vec<String> = items
            .iter()
            .map(|i| match i {
                None => "NULL".to_owned(),
                Some(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
            })
            .collect();
        format!("{{{}}}", parts.join(","))
    }

    proptest! {
        #[test]
        fn copy_rows_round_trip(fields in proptest::collection::vec(
            proptest::option::of("(\\PC|[\\t\\n\\r\\\\\\x08\\x0b\\x0c])*"), 1..6)) {
            let line: Vec<String> = fields
                .iter()
                .map(|f| f.as_deref().map_or("\\N".to_owned(), copy_escape))
                .collect();
            let line = line.join("\t");
            prop_assert_eq!(split_copy_text_row(line.as_bytes()).unwrap(), fields);
        }

        #[test]
        fn array_literals_round_trip(items in proptest::collection::vec(
            proptest::option::of("(\\PC|[\"\\\\{},\\t ])*"), 0..6)) {
            let parsed = parse_array_literal(&array_quote(&items)).unwrap();
            let back: Vec<Option<String>> = parsed
                .into_iter()
                .map(|i| match i {
                    ArrayItem::Null => None,
                    ArrayItem::Elem(s) => Some(s),
                    ArrayItem::Nested(_) => panic!("nested"),
                })
                .collect();
            prop_assert_eq!(back, items);
        }

        #[test]
        fn floats_round_trip_through_shortest_text(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            for text in [format!("{f}"), format!("{f:e}")] {
                let Value::Float(back) = s(701, &text) else { panic!() };
                prop_assert_eq!(back.to_bits(), f.to_bits());
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC*|[{}\",\\\\ NUL\\[\\]:=0-9]*") {
            let _ = parse_array_literal(&text);
            let _ = split_copy_text_row(text.as_bytes());
            for oid in [16, 17, 20, 26, 700, 1700, 2950, 1082] {
                let _ = decode_value(&PgType::scalar(oid), &text);
                let _ = decode_value(&PgType::array(0, oid), &text);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_copy(line in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = split_copy_text_row(&line);
        }
    }
}
