//! Decimal ↔ Avro decimal bytes (two's complement, big-endian), by hand on
//! the digit string: exact at any size, no bignum, no `f64`.

use std::fmt::Write as _;

use super::{invalid, EnvelopeError};
use crate::value::Decimal;

/// Decimal digits (ASCII, no sign) → minimal big-endian magnitude (empty
/// for zero). Works on base-2^32 limbs fed nine digits at a time.
pub(super) fn digits_to_magnitude(digits: &[u8]) -> Vec<u8> {
    let mut limbs: Vec<u32> = Vec::with_capacity(digits.len() / 9 + 1);
    let first = match digits.len() % 9 {
        0 => 9,
        r => r,
    };
    let mut start = 0;
    let mut end = first.min(digits.len());
    while start < digits.len() {
        let chunk = &digits[start..end];
        let value = chunk
            .iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
        let mul = 10u32.pow(chunk.len() as u32);
        let mut carry = u64::from(value);
        for l in limbs.iter_mut() {
            let v = u64::from(*l) * u64::from(mul) + carry;
            *l = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            limbs.push(carry as u32);
        }
        start = end;
        end = (end + 9).min(digits.len());
    }
    let mut out: Vec<u8> = limbs.iter().rev().flat_map(|l| l.to_be_bytes()).collect();
    let zeros = out.iter().take_while(|&&b| b == 0).count();
    out.drain(..zeros);
    out
}

/// Big-endian magnitude → decimal digits (`"0"` for zero).
pub(super) fn magnitude_to_digits(mag: &[u8]) -> String {
    let mut limbs: Vec<u32> = mag
        .rchunks(4)
        .map(|c| c.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
        .collect();
    while limbs.last() == Some(&0) {
        limbs.pop();
    }
    if limbs.is_empty() {
        return "0".to_owned();
    }
    const CHUNK: u64 = 1_000_000_000;
    let mut chunks: Vec<u32> = Vec::with_capacity(limbs.len() * 32 / 29 + 1);
    while !limbs.is_empty() {
        let mut rem = 0u64;
        for l in limbs.iter_mut().rev() {
            let cur = (rem << 32) | u64::from(*l);
            *l = (cur / CHUNK) as u32;
            rem = cur % CHUNK;
        }
        chunks.push(rem as u32);
        while limbs.last() == Some(&0) {
            limbs.pop();
        }
    }
    let mut s = String::with_capacity(chunks.len() * 9);
    let mut it = chunks.iter().rev();
    if let Some(top) = it.next() {
        let _ = write!(s, "{top}");
    }
    for c in it {
        let _ = write!(s, "{c:09}");
    }
    s
}

/// Minimal two's-complement big-endian bytes of ±`mag` (as Java's
/// `BigInteger.toByteArray`, which Avro's decimal specifies).
pub(super) fn to_twos_complement(negative: bool, mut mag: Vec<u8>) -> Vec<u8> {
    if mag.is_empty() {
        return vec![0];
    }
    if !negative {
        if mag[0] & 0x80 != 0 {
            mag.insert(0, 0);
        }
        return mag;
    }
    for b in mag.iter_mut() {
        *b = !*b;
    }
    // +1; the magnitude is not zero, so the carry stops inside.
    for b in mag.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            break;
        }
    }
    if mag[0] & 0x80 == 0 {
        mag.insert(0, 0xFF);
    }
    mag
}

/// Two's-complement big-endian bytes → (negative, minimal magnitude).
pub(super) fn from_twos_complement(bytes: &[u8]) -> (bool, Vec<u8>) {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let mut mag = bytes.to_vec();
    if negative {
        for b in mag.iter_mut() {
            *b = !*b;
        }
        for b in mag.iter_mut().rev() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
    }
    let zeros = mag.iter().take_while(|&&b| b == 0).count();
    mag.drain(..zeros);
    (negative, mag)
}

/// The Avro decimal bytes of `d` in a `numeric(precision, scale)` column:
/// rescaled exactly by appending zeros; `None` when `d` has more
/// fractional digits than `scale` or then more digits than `precision`.
pub(super) fn decimal_to_avro(d: &Decimal, precision: u32, scale: u32) -> Option<Vec<u8>> {
    if d.scale() > scale {
        return None;
    }
    if d.is_zero() {
        return Some(vec![0]);
    }
    let pad = (scale - d.scale()) as usize;
    if d.digits().len() + pad > precision as usize {
        return None;
    }
    let mut unscaled = Vec::with_capacity(d.digits().len() + pad);
    unscaled.extend_from_slice(d.digits().as_bytes());
    unscaled.resize(d.digits().len() + pad, b'0');
    Some(to_twos_complement(
        d.is_negative(),
        digits_to_magnitude(&unscaled),
    ))
}

/// Bytes an Avro decimal of `precision` digits may take: p·log₂10/8 + a
/// sign bit, rounded up generously. Bounds the quadratic base conversion
/// of a corrupt value.
pub(super) fn max_decimal_bytes(precision: u32) -> usize {
    precision as usize / 2 + 2
}

pub(super) fn decimal_from_avro(
    bytes: &[u8],
    precision: u32,
    scale: u32,
) -> Result<Decimal, EnvelopeError> {
    if bytes.is_empty() || bytes.len() > max_decimal_bytes(precision) {
        return Err(invalid(format!(
            "a numeric({precision},{scale}) value of {} bytes",
            bytes.len()
        )));
    }
    let (negative, mag) = from_twos_complement(bytes);
    let digits = magnitude_to_digits(&mag);
    if digits.len() > precision as usize {
        return Err(invalid(format!(
            "a numeric({precision},{scale}) value of {} digits",
            digits.len()
        )));
    }
    let scale = scale as usize;
    let mut text = String::with_capacity(digits.len() + scale + 3);
    if negative {
        text.push('-');
    }
    if scale == 0 {
        text.push_str(&digits);
    } else if digits.len() > scale {
        let (i, f) = digits.split_at(digits.len() - scale);
        let _ = write!(text, "{i}.{f}");
    } else {
        text.push_str("0.");
        text.extend(std::iter::repeat_n('0', scale - digits.len()));
        text.push_str(&digits);
    }
    text.parse()
        .map_err(|e| invalid(format!("numeric value: {e}")))
}
