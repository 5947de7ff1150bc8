//! The end-of-import report: per table, the row count and a checksum of the
//! keys, computed the same way on both sides so that they compare.
//!
//! The checksum is the wrapping sum of FNV-1a 64 over each row's key as
//! [`ferry_pipeline::batch::key_json`] spells it (integers as digits, text
//! as itself): it does not depend on row order, so the source side (read in
//! key order) and the target side (read in any order) agree exactly when the
//! same keys are on both sides. Row contents are not part of it: a mirrored
//! value is PostgreSQL's spelling of it, which differs from SQLite's for
//! reals, dates and blobs; `ferry verify` (another issue) compares contents.

use ferry_pipeline::batch::key_json;
use ferry_pipeline::value::Value;

/// Count and key checksum of one table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableSum {
    pub rows: u64,
    pub key_checksum: u64,
}

impl TableSum {
    /// Adds one row's key.
    pub fn add(&mut self, key: &[Value]) {
        self.rows += 1;
        self.key_checksum = self
            .key_checksum
            .wrapping_add(fnv1a64(key_json(key).as_bytes()));
    }
}

/// FNV-1a, 64 bits: tiny, stable across versions and machines.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn order_does_not_matter_and_int_text_keys_spell_alike() {
        let (mut a, mut b) = (TableSum::default(), TableSum::default());
        a.add(&[Value::Int(1)]);
        a.add(&[Value::Text("x".into())]);
        b.add(&[Value::Text("x".into())]);
        // The target reads keys back as text.
        b.add(&[Value::Text("1".into())]);
        assert_eq!(a, b);
        b.add(&[Value::Int(2)]);
        assert_ne!(a, b);
    }
}
