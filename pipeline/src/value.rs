//! Values that travel through the pipeline.
//!
//! A [`Value`] keeps every source value exact: numerics are decimal digit
//! strings of any length (never `f64`), temporal values keep the source's
//! canonical ISO text (PostgreSQL's range and precision exceed chrono's
//! everyday range), json keeps its text, and any type Ferry does not model
//! (enums, ranges, geometric types, domains over those) travels as text
//! together with its type name so that the sink can cast it back exactly.

use std::fmt;
use std::str::FromStr;

/// One column value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// int2, int4, int8, oid.
    Int(i64),
    /// float4, float8. The source already stores these as binary floats;
    /// Rust's shortest round-trip formatting gives the same bits back.
    Float(f64),
    /// numeric: exact, any size, NaN and ±Infinity kept as such.
    Numeric(Numeric),
    /// text, varchar, char, name, enums and every type Ferry does not model.
    Text(String),
    /// json and jsonb, exact text.
    Json(String),
    Uuid(uuid::Uuid),
    Bytes(Vec<u8>),
    /// date, time, timetz, timestamp, timestamptz, interval: the source's
    /// ISO text (sessions pin `DateStyle=ISO`, `TimeZone=UTC`).
    Temporal(TemporalKind, String),
    /// One-dimensional or nested arrays; elements may be `Null`.
    Array(Vec<Value>),
    /// A MongoDB ObjectId, kept typed (not as text) so that a sink can pick
    /// its representation; PostgreSQL gets the 24-char lowercase hex.
    ObjectId([u8; 12]),
    /// A nested document (MongoDB): fields in source order, names as given.
    /// The PostgreSQL sink writes it as JSON text for a jsonb column.
    Document(Vec<(String, Value)>),
}

/// Which temporal type a [`Value::Temporal`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemporalKind {
    Date,
    Time,
    TimeTz,
    Timestamp,
    Timestamptz,
    Interval,
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// The 24-char lowercase hex text of an ObjectId (MongoDB's own spelling).
pub fn object_id_hex(id: &[u8; 12]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(24);
    for b in id {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

/// An exact decimal of any precision and scale, or one of PostgreSQL's
/// special numeric values.
///
/// Hand-written rather than `rust_decimal` (28 digits at most, while a
/// PostgreSQL numeric can hold 131072 digits before the point) or
/// `bigdecimal` (whose `Display` switches to exponent notation): Ferry only
/// needs to carry the digits and the scale exactly, compare and print them.
/// Arithmetic belongs to the transforms, which use `rust_decimal`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Numeric {
    Finite(Decimal),
    NaN,
    PosInfinity,
    NegInfinity,
}

/// A finite exact decimal: `(-1)^negative * digits * 10^-scale`.
///
/// `digits` holds ASCII digits with no leading zeros (`"0"` for zero); the
/// scale is kept as given, so `1.50` stays `1.50` like in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decimal {
    negative: bool,
    digits: String,
    scale: u32,
}

/// Why a string is not a decimal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an exact decimal: {0:?}")]
pub struct DecimalParseError(pub String);

impl Decimal {
    pub fn is_negative(&self) -> bool {
        self.negative
    }
    /// The unscaled digits, without sign and leading zeros.
    pub fn digits(&self) -> &str {
        &self.digits
    }
    pub fn scale(&self) -> u32 {
        self.scale
    }
    pub fn is_zero(&self) -> bool {
        self.digits == "0"
    }
}

impl FromStr for Decimal {
    type Err = DecimalParseError;

    /// Parses plain (`-12.340`) and scientific (`1.5E+3`, `1E-2`) notation.
    /// A negative exponent raises the scale; a positive one appends zeros.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DecimalParseError(s.to_string());
        let t = s.trim();
        let (negative, rest) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(i) => {
                let e: i64 = rest[i + 1..].parse().map_err(|_| err())?;
                (&rest[..i], e)
            }
            None => (rest, 0),
        };
        let (int_part, frac_part) = match mantissa.find('.') {
            Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
            None => (mantissa, ""),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(err());
        }
        if !int_part.bytes().all(|b| b.is_ascii_digit())
            || !frac_part.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(err());
        }
        let mut digits = String::with_capacity(int_part.len() + frac_part.len());
        digits.push_str(int_part);
        digits.push_str(frac_part);
        let mut scale = frac_part.len() as i64 - exponent;
        if scale < 0 {
            // Bound the zeros a hostile exponent could make us allocate:
            // PostgreSQL's own limit is 131072 digits before the point.
            if -scale > 131_072 {
                return Err(err());
            }
            digits.extend(std::iter::repeat_n('0', (-scale) as usize));
            scale = 0;
        }
        if scale > 16_383 + 131_072 {
            return Err(err());
        }
        let trimmed = digits.trim_start_matches('0');
        let digits = if trimmed.is_empty() {
            "0".to_string()
        } else {
            trimmed.to_string()
        };
        Ok(Decimal {
            // `-0` is zero: PostgreSQL has no negative zero.
            negative: negative && digits != "0",
            digits,
            scale: scale as u32,
        })
    }
}

impl fmt::Display for Decimal {
    /// Plain notation, never scientific: `digits` with the point `scale`
    /// places from the right.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negative {
            f.write_str("-")?;
        }
        let scale = self.scale as usize;
        if scale == 0 {
            return f.write_str(&self.digits);
        }
        if self.digits.len() > scale {
            let (i, frac) = self.digits.split_at(self.digits.len() - scale);
            write!(f, "{i}.{frac}")
        } else {
            f.write_str("0.")?;
            for _ in 0..scale - self.digits.len() {
                f.write_str("0")?;
            }
            f.write_str(&self.digits)
        }
    }
}

impl FromStr for Numeric {
    type Err = DecimalParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "NaN" => Ok(Numeric::NaN),
            "Infinity" | "+Infinity" => Ok(Numeric::PosInfinity),
            "-Infinity" => Ok(Numeric::NegInfinity),
            other => other.parse().map(Numeric::Finite),
        }
    }
}

impl fmt::Display for Numeric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Numeric::Finite(d) => d.fmt(f),
            Numeric::NaN => f.write_str("NaN"),
            Numeric::PosInfinity => f.write_str("Infinity"),
            Numeric::NegInfinity => f.write_str("-Infinity"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> String {
        s.parse::<Decimal>().unwrap().to_string()
    }

    #[test]
    fn plain_and_scientific() {
        assert_eq!(d("1E+2"), "100");
        assert_eq!(d("1.5E+3"), "1500");
        assert_eq!(d("1E-2"), "0.01");
        assert_eq!(d("-0"), "0");
        assert_eq!(d("-0.00"), "0.00");
        assert_eq!(d("0001.50"), "1.50");
        assert_eq!(d(".5"), "0.5");
        assert_eq!(
            d("123456789012345678901234567890.123456789"),
            "123456789012345678901234567890.123456789"
        );
        assert!("1e".parse::<Decimal>().is_err());
        assert!("abc".parse::<Decimal>().is_err());
        assert!("".parse::<Decimal>().is_err());
        assert!("1E+999999999".parse::<Decimal>().is_err());
    }

    #[test]
    fn object_id_hex_is_lowercase_24_chars() {
        let id = [0x65, 0x0a, 0xff, 0, 1, 2, 3, 4, 5, 6, 0xab, 0xcd];
        assert_eq!(object_id_hex(&id), "650aff00010203040506abcd");
    }

    #[test]
    fn specials() {
        for s in ["NaN", "Infinity", "-Infinity"] {
            assert_eq!(s.parse::<Numeric>().unwrap().to_string(), s);
        }
    }

    proptest! {
        #[test]
        fn plain_text_round_trips(neg in any::<bool>(), int in "[1-9][0-9]{0,40}|0", frac in "[0-9]{0,40}") {
            let s = format!("{}{}{}{}", if neg && (int != "0" || frac.chars().any(|c| c != '0')) { "-" } else { "" },
                int, if frac.is_empty() { "" } else { "." }, frac);
            prop_assert_eq!(d(&s), s);
        }
    }
}
