//! Decimal normalization: fitting one numeric value exactly into a target
//! column's `numeric(p,s)` (or unconstrained `numeric`), or saying precisely
//! why it cannot be fitted.
//!
//! This module owns hard rule 1 of the design ("money is exact end to end")
//! for numeric columns. It is pure and does no I/O: [`normalize`] returns
//! either the value at exactly the column's scale or a [`Rejection`] that
//! the runtime dead-letters. It never rounds unless the mapping asked for a
//! [`RoundingMode`], never turns NULL into 0 and never passes NaN or
//! Infinity unless explicitly allowed.
//!
//! All arithmetic (rescaling, rounding, the precision check) works on the
//! exact digit string of [`crate::value::Decimal`], so a value of any size
//! is handled exactly, including values far beyond the 28-29 significant
//! digits that `rust_decimal` can hold (Decimal128, PostgreSQL numeric).
//! Nothing goes through `f64`: a [`Value::Float`] input is converted once,
//! through its shortest round-trip decimal text.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::value::{Decimal, Numeric, Value};

/// PostgreSQL's largest declarable `numeric` precision.
pub const MAX_PRECISION: u32 = 1000;
/// PostgreSQL's smallest declarable `numeric` scale (negative scales round
/// to tens, hundreds, … since PostgreSQL 15).
pub const MIN_SCALE: i32 = -1000;
/// PostgreSQL's largest declarable `numeric` scale.
pub const MAX_SCALE: i32 = 1000;

/// How to round a value that has more fractional digits than the column's
/// scale. Without one, such a value is rejected rather than rounded.
///
/// Deserializes from lowercase snake-case names (`"half_even"`,
/// `"half_up"`, `"down"`, `"floor"`, `"ceiling"`) for mapping files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundingMode {
    /// Nearest; ties go to the even neighbour (banker's rounding):
    /// 2.5 → 2, 3.5 → 4, -2.5 → -2.
    HalfEven,
    /// Nearest; ties away from zero: 2.5 → 3, -2.5 → -3. This is what
    /// PostgreSQL itself does when it casts into a `numeric(p,s)` column.
    HalfUp,
    /// Toward zero (truncation): 2.9 → 2, -2.9 → -2.
    Down,
    /// Toward negative infinity: 2.1 → 2, -2.1 → -3.
    Floor,
    /// Toward positive infinity: 2.1 → 3, -2.1 → -2.
    Ceiling,
}

impl RoundingMode {
    /// Every mode, for exhaustive tests and help texts.
    pub const ALL: [RoundingMode; 5] = [
        RoundingMode::HalfEven,
        RoundingMode::HalfUp,
        RoundingMode::Down,
        RoundingMode::Floor,
        RoundingMode::Ceiling,
    ];

    /// The name used in mapping files, e.g. `"half_even"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RoundingMode::HalfEven => "half_even",
            RoundingMode::HalfUp => "half_up",
            RoundingMode::Down => "down",
            RoundingMode::Floor => "floor",
            RoundingMode::Ceiling => "ceiling",
        }
    }
}

impl fmt::Display for RoundingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The precision and scale of a constrained `numeric(p,s)` column, checked
/// against PostgreSQL's limits (so that normalizing can never be asked to
/// pad a value with billions of zeros).
///
/// Follows PostgreSQL 15+: the scale may be negative (`numeric(2,-3)`
/// stores 12000 but not 12345) or larger than the precision
/// (`numeric(3,5)` stores 0.00999 at most).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PrecisionScale {
    precision: u32,
    scale: i32,
}

impl PrecisionScale {
    /// `numeric(precision, scale)`; precision 1..=1000, scale -1000..=1000.
    pub fn new(precision: u32, scale: i32) -> Result<Self, NumericTypeError> {
        let text = format!("numeric({precision},{scale})");
        if !(1..=MAX_PRECISION).contains(&precision) {
            return Err(NumericTypeError::new(
                &text,
                "precision must be between 1 and 1000",
            ));
        }
        if !(MIN_SCALE..=MAX_SCALE).contains(&scale) {
            return Err(NumericTypeError::new(
                &text,
                "scale must be between -1000 and 1000",
            ));
        }
        Ok(PrecisionScale { precision, scale })
    }

    /// Total significant digits the column holds.
    pub fn precision(self) -> u32 {
        self.precision
    }

    /// Digits after the decimal point (negative: rounded to a power of ten).
    pub fn scale(self) -> i32 {
        self.scale
    }
}

impl fmt::Display for PrecisionScale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "numeric({},{})", self.precision, self.scale)
    }
}

/// A column type text that is not a `numeric` type this module understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a usable numeric column type: {type_sql:?} ({reason})")]
pub struct NumericTypeError {
    type_sql: String,
    reason: &'static str,
}

impl NumericTypeError {
    fn new(type_sql: &str, reason: &'static str) -> Self {
        NumericTypeError {
            type_sql: type_sql.to_string(),
            reason,
        }
    }
}

/// Everything [`normalize`] needs to know about the target column and the
/// mapping's choices for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecimalTarget {
    /// `Some` for `numeric(p,s)`; `None` for unconstrained `numeric`, where
    /// finite values pass through exactly at their own scale.
    pub typmod: Option<PrecisionScale>,
    /// Whether the column accepts NULL. A NULL for a NOT NULL column is
    /// rejected, never replaced by 0.
    pub nullable: bool,
    /// How to round values with more fractional digits than the scale;
    /// `None` rejects them.
    pub rounding: Option<RoundingMode>,
    /// Let NaN and ±Infinity into an unconstrained column. Constrained
    /// columns always reject them.
    pub allow_special: bool,
}

impl DecimalTarget {
    /// Reads PostgreSQL's `format_type` text: `numeric` (unconstrained),
    /// `numeric(12,2)`, `numeric(5)` (scale 0), `numeric(2,-3)`.
    ///
    /// Nullability comes from the catalog separately, so it is a parameter
    /// rather than a default; rounding starts off and specials rejected.
    pub fn from_type_sql(type_sql: &str, nullable: bool) -> Result<Self, NumericTypeError> {
        let err = |reason| NumericTypeError::new(type_sql, reason);
        let t = type_sql.trim();
        let lower = t.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("numeric")
            .ok_or_else(|| err("expected numeric, numeric(p) or numeric(p,s)"))?
            .trim_start();
        let typmod = if rest.is_empty() {
            None
        } else {
            let inner = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| err("expected numeric, numeric(p) or numeric(p,s)"))?;
            let mut parts = inner.split(',');
            let precision: u32 = parts
                .next()
                .and_then(|p| p.trim().parse().ok())
                .ok_or_else(|| err("precision is not a number"))?;
            // numeric(p) means numeric(p,0) in PostgreSQL.
            let scale: i32 = match parts.next() {
                None => 0,
                Some(s) => s.trim().parse().map_err(|_| err("scale is not a number"))?,
            };
            if parts.next().is_some() {
                return Err(err("too many type modifiers"));
            }
            Some(
                PrecisionScale::new(precision, scale)
                    .map_err(|e| NumericTypeError::new(type_sql, e.reason))?,
            )
        };
        Ok(DecimalTarget {
            typmod,
            nullable,
            rounding: None,
            allow_special: false,
        })
    }
}

/// Which rule a rejected value broke; the name travels to the dead-letter
/// queue, so the names from [`RejectionRule::as_str`] are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectionRule {
    /// More non-zero fractional digits than the scale, and no rounding mode.
    NeedsRounding,
    /// More integer digits than `precision - scale` (possibly only after
    /// rounding, e.g. 9.995 → 10.00 at `numeric(3,2)`).
    TooLarge,
    /// NaN into a constrained column, or without `allow_special`.
    NotANumber,
    /// ±Infinity into a constrained column, or without `allow_special`.
    Infinite,
    /// NULL into a NOT NULL column.
    NullInNotNull,
    /// Text that is not a decimal number.
    Unparseable,
    /// A value of a non-numeric kind (bool, json, bytes, …).
    NotNumeric,
}

impl RejectionRule {
    /// Stable snake-case name, e.g. `"needs_rounding"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionRule::NeedsRounding => "needs_rounding",
            RejectionRule::TooLarge => "too_large",
            RejectionRule::NotANumber => "not_a_number",
            RejectionRule::Infinite => "infinite",
            RejectionRule::NullInNotNull => "null_in_not_null",
            RejectionRule::Unparseable => "unparseable",
            RejectionRule::NotNumeric => "not_numeric",
        }
    }
}

impl fmt::Display for RejectionRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a value cannot go into its column unchanged. Displays as
/// `"<rule>: <message>"` so that a dead-letter record read by a human names
/// both the rule and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rule}: {message}")]
pub struct Rejection {
    /// The rule that was broken.
    pub rule: RejectionRule,
    /// The value as text, exactly as received (`"NULL"` for NULL).
    pub raw: String,
    /// A sentence naming the value and what would have been needed, e.g.
    /// `"12.345 needs rounding to scale 2 (no rounding mode configured)"`.
    pub message: String,
}

/// Fits `v` into the column described by `target`.
///
/// Returns `Value::Null` (nullable columns only) or
/// `Value::Numeric(Numeric::Finite(d))` where `d` has exactly the column's
/// scale (trailing zeros padded: `1E+2` at scale 2 is `100.00`; a negative
/// scale gives scale 0) and prints in plain notation. For an unconstrained
/// column a finite value passes through unchanged, and NaN/±Infinity pass
/// only with `allow_special`.
///
/// Accepted inputs: `Numeric`, `Int`, `Text` (plain or scientific decimal
/// text, or `NaN`/`Infinity`/`-Infinity`), `Float` and `Null`. A `Float`
/// is taken at its shortest round-trip decimal text, so `0.1f64` becomes
/// exactly `0.1` (not the binary value 0.1000000000000000055…): that text
/// is what the source database and its clients print for the value.
pub fn normalize(v: &Value, target: &DecimalTarget) -> Result<Value, Rejection> {
    let owned;
    let numeric: &Numeric = match v {
        Value::Null if target.nullable => return Ok(Value::Null),
        Value::Null => {
            return Err(reject(
                RejectionRule::NullInNotNull,
                v,
                "NULL in NOT NULL numeric column (a NULL is never coerced to 0)".to_string(),
            ))
        }
        Value::Numeric(n) => n,
        Value::Int(_) | Value::Float(_) | Value::Text(_) => {
            let raw = raw_text(v);
            owned = raw.parse::<Numeric>().map_err(|_| {
                let message = format!("{raw:?} is not a decimal number");
                reject(RejectionRule::Unparseable, v, message)
            })?;
            &owned
        }
        _ => {
            let message = format!("{} is not a number", raw_text(v));
            return Err(reject(RejectionRule::NotNumeric, v, message));
        }
    };
    match (numeric, target.typmod) {
        (Numeric::Finite(d), None) => Ok(Value::Numeric(Numeric::Finite(d.clone()))),
        (Numeric::Finite(d), Some(ps)) => fit(d, ps, target.rounding, v),
        (special, None) if target.allow_special => Ok(Value::Numeric(special.clone())),
        (special, typmod) => {
            let rule = if *special == Numeric::NaN {
                RejectionRule::NotANumber
            } else {
                RejectionRule::Infinite
            };
            let message = match typmod {
                Some(ps) => format!("{special} cannot be stored in {ps}"),
                None => format!(
                    "{special} is not allowed in this numeric column \
                     (allow_special is off)"
                ),
            };
            Err(reject(rule, v, message))
        }
    }
}

/// Rounds (if allowed) and range-checks a finite decimal for `numeric(p,s)`.
fn fit(
    d: &Decimal,
    ps: PrecisionScale,
    mode: Option<RoundingMode>,
    v: &Value,
) -> Result<Value, Rejection> {
    let target_scale = i64::from(ps.scale);
    let negative = d.is_negative();
    let (mut digits, discarded) = truncate(d.digits(), i64::from(d.scale()), target_scale);
    let too_large = |digits: &str| digits != "0" && digits.len() > ps.precision as usize;
    // Checked on the truncated value first: a value whose integer part alone
    // does not fit is "too large" whatever the rounding, and saying so is
    // more useful than "needs rounding".
    if too_large(&digits) {
        let message = format!("{} does not fit {ps} ({})", raw_text(v), limit_text(ps));
        return Err(reject(RejectionRule::TooLarge, v, message));
    }
    if discarded != Discarded::Zero {
        let Some(mode) = mode else {
            let message = format!(
                "{} needs rounding to scale {} (no rounding mode configured)",
                raw_text(v),
                ps.scale
            );
            return Err(reject(RejectionRule::NeedsRounding, v, message));
        };
        let odd = digits.as_bytes().last().is_some_and(|b| b % 2 == 1);
        if rounds_away(mode, negative, odd, discarded) {
            increment(&mut digits);
        }
        if too_large(&digits) {
            let rounded = to_decimal(negative, &digits, target_scale, v)?;
            let message = format!(
                "{} rounded {mode} to scale {} is {rounded}, which does not fit {ps} ({})",
                raw_text(v),
                ps.scale,
                limit_text(ps)
            );
            return Err(reject(RejectionRule::TooLarge, v, message));
        }
    }
    Ok(Value::Numeric(Numeric::Finite(to_decimal(
        negative,
        &digits,
        target_scale,
        v,
    )?)))
}

/// What the digits dropped by [`truncate`] were worth, relative to one unit
/// in the last kept place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Discarded {
    Zero,
    BelowHalf,
    Half,
    AboveHalf,
}

/// Rescales the magnitude `digits * 10^-scale` to `target` scale by
/// appending zeros or dropping digits (truncation toward zero). Returns the
/// new unscaled digits (no leading zeros, `"0"` for zero) and what was
/// dropped, so that the caller can round in any mode without arithmetic
/// beyond "add one".
fn truncate(digits: &str, scale: i64, target: i64) -> (String, Discarded) {
    if target >= scale {
        if digits == "0" {
            return ("0".to_string(), Discarded::Zero);
        }
        // Both scales are bounded (parser and PrecisionScale), so the
        // difference is a small, allocatable count.
        let pad = (target - scale) as usize;
        let mut out = String::with_capacity(digits.len() + pad);
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', pad));
        return (out, Discarded::Zero);
    }
    let drop = (scale - target) as usize;
    let len = digits.len();
    let (kept, first, rest) = if drop <= len {
        let (kept, dropped) = digits.split_at(len - drop);
        (kept, dropped.as_bytes()[0], &dropped[1..])
    } else {
        // Every digit is dropped and the first dropped place is a leading
        // zero, so the value is below half a unit.
        ("", b'0', digits)
    };
    let rest_nonzero = rest.bytes().any(|b| b != b'0');
    let discarded = match (first, rest_nonzero) {
        (b'0', false) => Discarded::Zero,
        (b'5', false) => Discarded::Half,
        (b'5'..=b'9', _) => Discarded::AboveHalf,
        _ => Discarded::BelowHalf,
    };
    let kept = kept.trim_start_matches('0');
    let kept = if kept.is_empty() { "0" } else { kept };
    (kept.to_string(), discarded)
}

/// Whether rounding a truncated magnitude must add one unit in the last
/// place. Modes are defined on the signed value, hence `negative`.
fn rounds_away(mode: RoundingMode, negative: bool, last_odd: bool, discarded: Discarded) -> bool {
    match (mode, discarded) {
        (_, Discarded::Zero) => false,
        (RoundingMode::Down, _) => false,
        (RoundingMode::HalfUp, d) => d != Discarded::BelowHalf,
        (RoundingMode::HalfEven, Discarded::AboveHalf) => true,
        (RoundingMode::HalfEven, Discarded::Half) => last_odd,
        (RoundingMode::HalfEven, _) => false,
        (RoundingMode::Floor, _) => negative,
        (RoundingMode::Ceiling, _) => !negative,
    }
}

/// Adds one to an unsigned decimal digit string, carrying as far as needed
/// (`"999"` → `"1000"`).
fn increment(digits: &mut String) {
    // Trailing nines become zeros; the digit before them goes up by one (or
    // a new leading 1 appears when the string was all nines).
    let kept = digits.trim_end_matches('9').len();
    let nines = digits.len() - kept;
    let bumped = digits[..kept]
        .chars()
        .next_back()
        .and_then(|c| c.to_digit(10))
        .and_then(|d| char::from_digit(d + 1, 10));
    match bumped {
        Some(c) => {
            digits.truncate(kept - 1);
            digits.push(c);
        }
        None => {
            digits.clear();
            digits.push('1');
        }
    }
    digits.extend(std::iter::repeat_n('0', nines));
}

/// Builds the output decimal `(-1)^negative * digits * 10^-scale`; a
/// negative scale becomes trailing zeros at scale 0 (what PostgreSQL
/// stores). Goes through `Decimal`'s own parser because `value.rs` keeps its
/// invariants (no leading zeros, no negative zero) behind `FromStr`.
fn to_decimal(negative: bool, digits: &str, scale: i64, v: &Value) -> Result<Decimal, Rejection> {
    let sign = if negative { "-" } else { "" };
    let text = format!("{sign}{digits}E{}", -scale);
    text.parse::<Decimal>().map_err(|_| {
        // Unreachable with bounded scales; reported, not panicked, so the
        // event still reaches the dead-letter queue with its value.
        let message = format!("{} could not be rebuilt at scale {scale}", raw_text(v));
        reject(RejectionRule::Unparseable, v, message)
    })
}

/// Human wording of a `numeric(p,s)` range limit.
fn limit_text(ps: PrecisionScale) -> String {
    let int_digits = i64::from(ps.precision) - i64::from(ps.scale);
    if int_digits >= 1 {
        let plural = if int_digits == 1 { "" } else { "s" };
        format!("at most {int_digits} digit{plural} before the decimal point")
    } else {
        format!("absolute value must be below 10^{int_digits}")
    }
}

/// Shortest round-trip decimal text of a float, with PostgreSQL's spellings
/// of the special values. Rust's `Display` for `f64` prints the shortest
/// digits that parse back to the same bits, in plain (never exponent)
/// notation; this is the only place a float is touched, and only as text.
///
/// Plain digits always (`1e300` is 301 digits), unlike
/// [`crate::json::float_text`], which switches to an exponent outside
/// everyday magnitudes: a rejection record shows the value digit for digit,
/// the way a decimal column would have to hold it.
fn float_plain_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_string()
    } else if f.is_infinite() {
        if f.is_sign_negative() {
            "-Infinity".to_string()
        } else {
            "Infinity".to_string()
        }
    } else {
        format!("{f}")
    }
}

/// The value as text for rejection records, as close to what the source
/// sent as the value model allows.
fn raw_text(v: &Value) -> String {
    match v {
        Value::Null => "NULL".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => float_plain_text(*f),
        Value::Numeric(n) => n.to_string(),
        Value::Text(s) | Value::Json(s) | Value::Temporal(_, s) => s.clone(),
        Value::Uuid(u) => u.to_string(),
        Value::Bytes(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("\\x{hex}")
        }
        other => format!("{other:?}"),
    }
}

fn reject(rule: RejectionRule, v: &Value, message: String) -> Rejection {
    Rejection {
        rule,
        raw: raw_text(v),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal::RoundingStrategy;

    fn target(type_sql: &str, rounding: Option<RoundingMode>) -> DecimalTarget {
        DecimalTarget {
            rounding,
            ..DecimalTarget::from_type_sql(type_sql, true).unwrap()
        }
    }

    /// Normalizes `v` and renders the outcome as text or the rule broken.
    fn run(v: &Value, t: &DecimalTarget) -> Result<String, RejectionRule> {
        match normalize(v, t) {
            Ok(Value::Numeric(n)) => Ok(n.to_string()),
            Ok(Value::Null) => Ok("NULL".to_string()),
            Ok(other) => panic!("unexpected output {other:?}"),
            Err(r) => Err(r.rule),
        }
    }

    fn n(
        text: &str,
        type_sql: &str,
        rounding: Option<RoundingMode>,
    ) -> Result<String, RejectionRule> {
        run(&Value::Text(text.to_string()), &target(type_sql, rounding))
    }

    /// Sign, significant digits and exponent with trailing zeros removed:
    /// equal exactly when the numbers are equal, whatever their scales.
    fn canonical(d: &Decimal) -> (bool, String, i64) {
        if d.is_zero() {
            return (false, "0".to_string(), 0);
        }
        let trimmed = d.digits().trim_end_matches('0');
        let zeros = (d.digits().len() - trimmed.len()) as i64;
        (
            d.is_negative(),
            trimmed.to_string(),
            zeros - i64::from(d.scale()),
        )
    }

    fn canonical_text(s: &str) -> (bool, String, i64) {
        canonical(&s.parse::<Decimal>().unwrap())
    }

    fn strategy(mode: RoundingMode) -> RoundingStrategy {
        match mode {
            RoundingMode::HalfEven => RoundingStrategy::MidpointNearestEven,
            RoundingMode::HalfUp => RoundingStrategy::MidpointAwayFromZero,
            RoundingMode::Down => RoundingStrategy::ToZero,
            RoundingMode::Floor => RoundingStrategy::ToNegativeInfinity,
            RoundingMode::Ceiling => RoundingStrategy::ToPositiveInfinity,
        }
    }

    use RejectionRule::*;
    use RoundingMode::*;

    #[test]
    fn scientific_input_is_padded_to_scale() {
        assert_eq!(n("1E+2", "numeric(10,2)", None), Ok("100.00".into()));
        assert_eq!(n("1e2", "numeric(5)", None), Ok("100".into()));
        assert_eq!(n("1.5E-3", "numeric(10,4)", None), Ok("0.0015".into()));
        assert_eq!(n("1.5E-3", "numeric(10,3)", None), Err(NeedsRounding));
        assert_eq!(
            n("1.5E-3", "numeric(10,3)", Some(HalfEven)),
            Ok("0.002".into())
        );
        assert_eq!(n("1.5E-3", "numeric(10,3)", Some(Down)), Ok("0.001".into()));
        assert_eq!(
            n("1.5E-3", "numeric(10,2)", Some(HalfUp)),
            Ok("0.00".into())
        );
        assert_eq!(n("1.5E-3", "numeric", None), Ok("0.0015".into()));
        assert_eq!(n("1E+2", "numeric", None), Ok("100".into()));
    }

    #[test]
    fn trailing_zeros_beyond_scale_are_not_rounding() {
        assert_eq!(n("1.500", "numeric(5,2)", None), Ok("1.50".into()));
        assert_eq!(
            n(
                "-7.0000000000000000000000000000000000",
                "numeric(3,0)",
                None
            ),
            Ok("-7".into())
        );
    }

    #[test]
    fn negative_zero_is_zero() {
        assert_eq!(n("-0", "numeric(5,2)", None), Ok("0.00".into()));
        assert_eq!(n("-0", "numeric", None), Ok("0".into()));
        assert_eq!(n("-0.001", "numeric(5,2)", Some(Down)), Ok("0.00".into()));
        assert_eq!(
            n("-0.001", "numeric(5,2)", Some(Ceiling)),
            Ok("0.00".into())
        );
        assert_eq!(n("-0.001", "numeric(5,2)", Some(Floor)), Ok("-0.01".into()));
        assert_eq!(
            run(&Value::Float(-0.0), &target("numeric(4,1)", None)),
            Ok("0.0".into())
        );
    }

    #[test]
    fn thirty_digit_values_are_exact() {
        let v = "123456789012345678901234567890";
        assert_eq!(n(v, "numeric", None), Ok(v.into()));
        assert_eq!(n(v, "numeric(30,0)", None), Ok(v.into()));
        assert_eq!(n(v, "numeric(35,5)", None), Ok(format!("{v}.00000")));
        assert_eq!(n(v, "numeric(29,0)", None), Err(TooLarge));
        let f = "-123456789012345678901234567890.125";
        assert_eq!(n(f, "numeric(32,2)", None), Err(NeedsRounding));
        assert_eq!(
            n(f, "numeric(32,2)", Some(HalfEven)),
            Ok(f.replace(".125", ".12"))
        );
        assert_eq!(
            n(f, "numeric(32,2)", Some(HalfUp)),
            Ok(f.replace(".125", ".13"))
        );
        assert_eq!(
            n(f, "numeric(32,2)", Some(Floor)),
            Ok(f.replace(".125", ".13"))
        );
        assert_eq!(
            n(f, "numeric(32,2)", Some(Ceiling)),
            Ok(f.replace(".125", ".12"))
        );
    }

    #[test]
    fn decimal128_like_values_are_exact() {
        let v = "1234567890123456789012345678901234";
        assert_eq!(n(v, "numeric", None), Ok(v.into()));
        assert_eq!(n(v, "numeric(34,0)", None), Ok(v.into()));
        assert_eq!(n(v, "numeric(38,4)", None), Ok(format!("{v}.0000")));
        assert_eq!(n(v, "numeric(33,0)", None), Err(TooLarge));
        assert_eq!(
            n(&format!("-{v}E-34"), "numeric(34,34)", None),
            Ok(format!("-0.{v}"))
        );
        // Decimal128's extremes: 34 digits with exponents 6111 and -6176.
        let max = n("9.999999999999999999999999999999999E+6144", "numeric", None).unwrap();
        assert_eq!(max, format!("{}{}", "9".repeat(34), "0".repeat(6111)));
        let tiny = n("1E-6176", "numeric", None).unwrap();
        assert_eq!(tiny, format!("0.{}1", "0".repeat(6175)));
        assert_eq!(n("1E-6176", "numeric(10,2)", None), Err(NeedsRounding));
        assert_eq!(
            n("1E-6176", "numeric(10,2)", Some(Ceiling)),
            Ok("0.01".into())
        );
    }

    #[test]
    fn carry_runs_through_long_values() {
        let nines = "9".repeat(40);
        let one = format!("1{}", "0".repeat(40));
        assert_eq!(
            n(&format!("{nines}.5"), "numeric(1000,0)", Some(HalfUp)),
            Ok(one.clone())
        );
        assert_eq!(
            n(&format!("-{nines}.5"), "numeric(1000,0)", Some(HalfEven)),
            Ok(format!("-{one}"))
        );
        assert_eq!(
            n(&format!("{nines}.5"), "numeric(40,0)", Some(HalfUp)),
            Err(TooLarge)
        );
    }

    #[test]
    fn rounding_modes_on_ties() {
        // (input, half_even, half_up, down, floor, ceiling) at scale 0.
        let table = [
            ("2.5", "2", "3", "2", "2", "3"),
            ("-2.5", "-2", "-3", "-2", "-3", "-2"),
            ("3.5", "4", "4", "3", "3", "4"),
            ("-3.5", "-4", "-4", "-3", "-4", "-3"),
            ("0.5", "0", "1", "0", "0", "1"),
            ("-0.5", "0", "-1", "0", "-1", "0"),
            ("2.51", "3", "3", "2", "2", "3"),
            ("-2.49", "-2", "-2", "-2", "-3", "-2"),
        ];
        for (input, he, hu, down, floor, ceil) in table {
            for (mode, want) in [
                (HalfEven, he),
                (HalfUp, hu),
                (Down, down),
                (Floor, floor),
                (Ceiling, ceil),
            ] {
                assert_eq!(
                    n(input, "numeric(10,0)", Some(mode)),
                    Ok(want.to_string()),
                    "{input} {mode}"
                );
            }
        }
        assert_eq!(
            n("0.125", "numeric(5,2)", Some(HalfEven)),
            Ok("0.12".into())
        );
        assert_eq!(
            n("-0.135", "numeric(5,2)", Some(HalfEven)),
            Ok("-0.14".into())
        );
    }

    #[test]
    fn precision_overflow_including_after_rounding() {
        assert_eq!(n("999.99", "numeric(5,2)", None), Ok("999.99".into()));
        assert_eq!(n("1000", "numeric(5,2)", None), Err(TooLarge));
        // Too large whatever the rounding: reported as too large.
        assert_eq!(n("12345.678", "numeric(5,2)", None), Err(TooLarge));
        assert_eq!(n("9.995", "numeric(3,2)", None), Err(NeedsRounding));
        assert_eq!(n("9.995", "numeric(3,2)", Some(Down)), Ok("9.99".into()));
        assert_eq!(n("9.995", "numeric(3,2)", Some(HalfEven)), Err(TooLarge));
        let err = normalize(
            &Value::Text("9.995".into()),
            &target("numeric(3,2)", Some(HalfUp)),
        )
        .unwrap_err();
        assert_eq!(err.rule, TooLarge);
        assert_eq!(
            err.message,
            "9.995 rounded half_up to scale 2 is 10.00, which does not fit numeric(3,2) \
             (at most 1 digit before the decimal point)"
        );
    }

    #[test]
    fn rejection_names_rule_and_value() {
        let err = normalize(
            &Value::Text("12.345".into()),
            &target("numeric(10,2)", None),
        )
        .unwrap_err();
        assert_eq!(err.rule, NeedsRounding);
        assert_eq!(err.raw, "12.345");
        assert_eq!(
            err.message,
            "12.345 needs rounding to scale 2 (no rounding mode configured)"
        );
        assert_eq!(
            err.to_string(),
            "needs_rounding: 12.345 needs rounding to scale 2 (no rounding mode configured)"
        );
        let err = normalize(&Value::Int(123_456), &target("numeric(5,2)", None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "too_large: 123456 does not fit numeric(5,2) (at most 3 digits before the decimal point)"
        );
    }

    #[test]
    fn special_values() {
        let nan = Value::Numeric(Numeric::NaN);
        let inf = Value::Numeric(Numeric::PosInfinity);
        let ninf = Value::Numeric(Numeric::NegInfinity);
        let constrained = target("numeric(12,2)", Some(HalfEven));
        let strict = target("numeric", None);
        let open = DecimalTarget {
            allow_special: true,
            ..strict
        };
        for v in [
            nan.clone(),
            Value::Text("NaN".into()),
            Value::Float(f64::NAN),
        ] {
            assert_eq!(run(&v, &constrained), Err(NotANumber));
            assert_eq!(run(&v, &strict), Err(NotANumber));
            assert_eq!(run(&v, &open), Ok("NaN".into()));
            // allow_special never opens a constrained column.
            assert_eq!(
                run(
                    &v,
                    &DecimalTarget {
                        allow_special: true,
                        ..constrained
                    }
                ),
                Err(NotANumber)
            );
        }
        for (v, s) in [
            (&inf, "Infinity"),
            (&ninf, "-Infinity"),
            (&Value::Float(f64::NEG_INFINITY), "-Infinity"),
        ] {
            assert_eq!(run(v, &constrained), Err(Infinite));
            assert_eq!(run(v, &strict), Err(Infinite));
            assert_eq!(run(v, &open), Ok(s.into()));
        }
        let err = normalize(&inf, &constrained).unwrap_err();
        assert_eq!(
            err.to_string(),
            "infinite: Infinity cannot be stored in numeric(12,2)"
        );
    }

    #[test]
    fn null_never_becomes_zero() {
        let nullable = target("numeric(12,2)", Some(HalfEven));
        assert_eq!(normalize(&Value::Null, &nullable), Ok(Value::Null));
        let not_null = DecimalTarget {
            nullable: false,
            ..nullable
        };
        let err = normalize(&Value::Null, &not_null).unwrap_err();
        assert_eq!(err.rule, NullInNotNull);
        assert_eq!(err.raw, "NULL");
        assert!(err.message.contains("NULL in NOT NULL"), "{err}");
        let unconstrained = DecimalTarget::from_type_sql("numeric", false).unwrap();
        assert_eq!(run(&Value::Null, &unconstrained), Err(NullInNotNull));
    }

    #[test]
    fn negative_and_oversized_scales() {
        // PostgreSQL 15+: numeric(2,-3) holds multiples of 1000 up to 99000.
        assert_eq!(n("12000", "numeric(2,-3)", None), Ok("12000".into()));
        assert_eq!(n("12000.000", "numeric(2,-3)", None), Ok("12000".into()));
        assert_eq!(n("12345", "numeric(2,-3)", None), Err(NeedsRounding));
        assert_eq!(
            n("12345", "numeric(2,-3)", Some(HalfUp)),
            Ok("12000".into())
        );
        assert_eq!(
            n("12500", "numeric(2,-3)", Some(HalfUp)),
            Ok("13000".into())
        );
        assert_eq!(
            n("12500", "numeric(2,-3)", Some(HalfEven)),
            Ok("12000".into())
        );
        assert_eq!(n("99500", "numeric(2,-3)", Some(HalfUp)), Err(TooLarge));
        assert_eq!(n("0.4", "numeric(2,-3)", Some(HalfUp)), Ok("0".into()));
        // numeric(3,5) holds at most 0.00999.
        assert_eq!(n("0.00999", "numeric(3,5)", None), Ok("0.00999".into()));
        assert_eq!(n("0.001", "numeric(3,5)", None), Ok("0.00100".into()));
        assert_eq!(n("0.01", "numeric(3,5)", None), Err(TooLarge));
        assert_eq!(n("0.009995", "numeric(3,5)", Some(HalfUp)), Err(TooLarge));
    }

    #[test]
    fn other_inputs() {
        let t = target("numeric(20,2)", None);
        assert_eq!(run(&Value::Int(42), &t), Ok("42.00".into()));
        assert_eq!(
            run(&Value::Int(i64::MIN), &target("numeric(21,2)", None)),
            Ok("-9223372036854775808.00".into())
        );
        assert_eq!(run(&Value::Int(i64::MIN), &t), Err(TooLarge));
        // A float is taken at its shortest round-trip text: 0.1f64 is 0.1.
        assert_eq!(run(&Value::Float(0.1), &t), Ok("0.10".into()));
        assert_eq!(
            run(&Value::Float(0.1), &target("numeric(30,25)", None)),
            Ok(format!("0.1{}", "0".repeat(24)))
        );
        assert_eq!(run(&Value::Float(0.125), &t), Err(NeedsRounding));
        assert_eq!(
            run(&Value::Float(1e21), &target("numeric", None)),
            Ok(format!("1{}", "0".repeat(21)))
        );
        let tiny = run(&Value::Float(5e-324), &target("numeric", None)).unwrap();
        assert_eq!(tiny, format!("0.{}5", "0".repeat(323)));
        assert_eq!(run(&Value::Text("abc".into()), &t), Err(Unparseable));
        assert_eq!(run(&Value::Text("1e".into()), &t), Err(Unparseable));
        assert_eq!(run(&Value::Text("".into()), &t), Err(Unparseable));
        assert_eq!(run(&Value::Bool(true), &t), Err(NotNumeric));
        assert_eq!(run(&Value::Json("1".into()), &t), Err(NotNumeric));
        assert_eq!(run(&Value::Bytes(vec![0xde, 0xad]), &t), Err(NotNumeric));
        let err = normalize(&Value::Text("12,50".into()), &t).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unparseable: \"12,50\" is not a decimal number"
        );
    }

    #[test]
    fn type_sql_parsing() {
        let ps = |s: &str| {
            DecimalTarget::from_type_sql(s, true)
                .map(|t| t.typmod.map(|p| (p.precision(), p.scale())))
        };
        assert_eq!(ps("numeric"), Ok(None));
        assert_eq!(ps("numeric(12,2)"), Ok(Some((12, 2))));
        assert_eq!(ps("numeric(38,10)"), Ok(Some((38, 10))));
        assert_eq!(ps("numeric(5)"), Ok(Some((5, 0))));
        assert_eq!(ps("numeric(2,-3)"), Ok(Some((2, -3))));
        assert_eq!(ps(" NUMERIC(12, 2) "), Ok(Some((12, 2))));
        for bad in [
            "integer",
            "numeric(0,0)",
            "numeric(1001,0)",
            "numeric(5,1001)",
            "numeric(5,2",
            "numeric(a)",
            "numeric(1,2,3)",
            "numeric(12,2)[]",
            "numericx",
            "",
        ] {
            assert!(ps(bad).is_err(), "{bad}");
        }
        let t = DecimalTarget::from_type_sql("numeric(12,2)", false).unwrap();
        assert!(!t.nullable && t.rounding.is_none() && !t.allow_special);
    }

    #[test]
    fn increment_carries() {
        for (from, to) in [
            ("0", "1"),
            ("8", "9"),
            ("9", "10"),
            ("199", "200"),
            ("999", "1000"),
            ("1234", "1235"),
        ] {
            let mut d = from.to_string();
            increment(&mut d);
            assert_eq!(d, to);
        }
    }

    #[test]
    fn rounding_mode_names() {
        for mode in RoundingMode::ALL {
            let json = format!("\"{mode}\"");
            assert_eq!(serde_json::from_str::<RoundingMode>(&json).unwrap(), mode);
        }
        assert_eq!(
            serde_json::from_str::<RoundingMode>("\"half_even\"").unwrap(),
            HalfEven
        );
        assert!(serde_json::from_str::<RoundingMode>("\"HalfEven\"").is_err());
        assert!(serde_json::from_str::<RoundingMode>("\"half_down\"").is_err());
    }

    /// Decimal text in plain or scientific notation, up to ~80 digits.
    fn decimal_text() -> impl Strategy<Value = String> {
        (
            any::<bool>(),
            "[0-9]{1,40}",
            "[0-9]{0,40}",
            prop::option::of(-40i64..40),
        )
            .prop_map(|(neg, int, frac, exp)| {
                let mut s = String::new();
                if neg {
                    s.push('-');
                }
                s.push_str(&int);
                if !frac.is_empty() {
                    s.push('.');
                    s.push_str(&frac);
                }
                if let Some(e) = exp {
                    s.push_str(&format!("E{e:+}"));
                }
                s
            })
    }

    fn any_target() -> impl Strategy<Value = DecimalTarget> {
        let typmod = prop_oneof![
            1 => Just(None),
            6 => (1u32..=90, -10i32..=60).prop_map(|(p, s)| Some(PrecisionScale::new(p, s).unwrap())),
        ];
        let mode = prop::option::of(prop::sample::select(RoundingMode::ALL.to_vec()));
        (typmod, mode).prop_map(|(typmod, rounding)| DecimalTarget {
            typmod,
            nullable: true,
            rounding,
            allow_special: false,
        })
    }

    /// A rust_decimal mantissa: anywhere in its 96 bits, small, or a tie.
    fn mantissa() -> impl Strategy<Value = i128> {
        let max = (1i128 << 96) - 1;
        prop_oneof![
            -max..=max,
            -2000i128..2000,
            (-(10i128.pow(15))..10i128.pow(15)).prop_map(|k| k * 10 + 5),
        ]
    }

    /// A value scale and a target scale; half the time the target drops one
    /// to three digits, so that ties (mantissas ending in 5) really occur.
    fn scale_and_dp() -> impl Strategy<Value = (u32, u32)> {
        (0u32..=28, any::<bool>(), 1u32..=3, 0u32..=28).prop_map(|(scale, near, drop, dp)| {
            (scale, if near { scale.saturating_sub(drop) } else { dp })
        })
    }

    proptest! {
        /// A value that already fits comes back as the same number, at
        /// exactly the column's scale, whatever the rounding mode.
        #[test]
        fn exactness(neg in any::<bool>(), int in "[1-9][0-9]{0,45}|0", frac in "[0-9]{0,45}",
                     extra_scale in 0u32..5, extra_int in 0u32..5,
                     mode in prop::option::of(prop::sample::select(RoundingMode::ALL.to_vec()))) {
            let text = format!("{}{int}.{frac}0", if neg { "-" } else { "" });
            let int_len = if int == "0" { 0 } else { int.len() as u32 };
            let scale = frac.len() as u32 + 1 + extra_scale;
            let p = (int_len + scale + extra_int).max(1);
            let t = DecimalTarget { rounding: mode, ..target(&format!("numeric({p},{scale})"), None) };
            let out = normalize(&Value::Text(text.clone()), &t).unwrap();
            let Value::Numeric(Numeric::Finite(d)) = out else { panic!("{out:?}") };
            prop_assert_eq!(d.scale(), scale);
            prop_assert_eq!(canonical(&d), canonical_text(&text));
        }

        /// Same for negative scales: multiples of 10^k fit numeric(p,-k).
        #[test]
        fn exactness_negative_scale(int in "[1-9][0-9]{0,30}", zeros in 0usize..8, k in 0i32..8) {
            let k = k.min(zeros as i32);
            let text = format!("{int}{}", "0".repeat(zeros));
            let p = text.len() as i32 - k;
            let out = n(&text, &format!("numeric({p},{})", -k), None).unwrap();
            prop_assert_eq!(out, text);
        }

        /// Normalizing twice changes nothing; output is plain notation at
        /// the column's scale (or the input's, when unconstrained).
        #[test]
        fn idempotent_and_plain(text in decimal_text(), t in any_target()) {
            if let Ok(once) = normalize(&Value::Text(text.clone()), &t) {
                prop_assert_eq!(normalize(&once, &t), Ok(once.clone()));
                let Value::Numeric(Numeric::Finite(d)) = &once else { panic!("{once:?}") };
                let s = d.to_string();
                prop_assert!(s.bytes().all(|b| b.is_ascii_digit() || b == b'-' || b == b'.'), "{}", s);
                prop_assert!(s.matches('.').count() <= 1 && !s.ends_with('.') && !s.starts_with('.'), "{}", s);
                if let Some(ps) = t.typmod {
                    prop_assert_eq!(i64::from(d.scale()), i64::from(ps.scale().max(0)));
                } else {
                    prop_assert_eq!(canonical(d), canonical_text(&text));
                }
            }
        }

        /// Within rust_decimal's range, rounding agrees with
        /// `round_dp_with_strategy`.
        #[test]
        fn agrees_with_rust_decimal(m in mantissa(), (scale, dp) in scale_and_dp(),
                                    mode in prop::sample::select(RoundingMode::ALL.to_vec())) {
            let x = rust_decimal::Decimal::try_from_i128_with_scale(m, scale).unwrap();
            let want = x.round_dp_with_strategy(dp, strategy(mode)).to_string();
            let got = n(&x.to_string(), &format!("numeric(1000,{dp})"), Some(mode)).unwrap();
            prop_assert_eq!(canonical_text(&got), canonical_text(&want), "{} at {} {}", x, dp, mode);
        }

        /// Beyond rust_decimal's range: a long prefix in front of a
        /// rust_decimal-sized value rounds like the value alone (the value's
        /// integer part has at most 29 digits, padded to 30, so rounding
        /// never carries into the prefix).
        #[test]
        fn long_values_round_like_their_low_digits(prefix in "[1-9][0-9]{0,60}", m in 0i128..(1i128 << 96),
                                                  neg in any::<bool>(), (scale, dp) in scale_and_dp(),
                                                  mode in prop::sample::select(RoundingMode::ALL.to_vec())) {
            let sign = if neg { "-" } else { "" };
            let low = |digits: String, scale: usize| {
                let padded = format!("{digits:0>width$}", width = 30 + scale);
                let (i, f) = padded.split_at(30);
                format!("{sign}{prefix}{i}.{f}0")
            };
            let x = rust_decimal::Decimal::try_from_i128_with_scale(if neg { -m } else { m }, scale).unwrap();
            let r = x.round_dp_with_strategy(dp, strategy(mode)).abs();
            let want = low(r.mantissa().to_string(), r.scale() as usize);
            let got = n(&low(m.to_string(), scale as usize), &format!("numeric(1000,{dp})"), Some(mode)).unwrap();
            prop_assert_eq!(canonical_text(&got), canonical_text(&want));
        }
    }
}
