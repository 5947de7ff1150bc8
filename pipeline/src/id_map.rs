//! The id map: legacy ids (ObjectIds, Convex `_id`s, any key) translated
//! into the target's key type, and the annotation that tells a sink which
//! columns carry legacy ids to translate.
//!
//! The transform stage does not allocate anything: it writes the legacy
//! id's canonical text into the column and marks the column with an
//! [`IdRef`]. The sink allocates and looks up the new ids in the same
//! transaction as the rows (see `ferry_id_map` in the PostgreSQL sink), so
//! that a crash never leaves a mapping without its row or a row without
//! its mapping, and a replayed change gets the id it got the first time.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::value::{object_id_hex, Numeric, Value};

/// How new ids of a namespace are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum IdKind {
    /// A new UUIDv7 (time-ordered, random) per legacy id.
    UuidV7,
    /// UUIDv5 of the namespace UUID and the legacy id's text: the same
    /// legacy id gives the same new id in every environment.
    UuidV5 { namespace_uuid: Uuid },
    /// The next value of the namespace's sequence, starting at `start`.
    Bigint { start: i64 },
    /// A reverse pipeline's map (`ferry rollback init`): the column holds
    /// a *new* id, written as the legacy id the forward pipeline's map
    /// gives it; a row created after cutover gets a fresh legacy id of
    /// kind `legacy`, recorded in that map (docs/rollback.md).
    Inverse { legacy: LegacyId },
}

/// How a reverse pipeline makes the legacy id of a row created after
/// cutover: the way the old system would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegacyId {
    /// The next value of the old table's own sequence (its `serial` /
    /// identity key's, named by the id map's `sequence`), so that the old
    /// application, back in charge, keeps counting past it.
    #[default]
    Bigint,
    /// A new MongoDB ObjectId (time, random, counter), as the driver makes.
    ObjectId,
    /// A new UUID (v7: time-ordered, random).
    Uuid,
}

impl LegacyId {
    /// A fresh legacy id made without the database; `None` for `Bigint`
    /// (drawn from the old table's sequence).
    pub fn fresh(self) -> Option<String> {
        match self {
            LegacyId::Bigint => None,
            LegacyId::Uuid => Some(Uuid::now_v7().to_string()),
            LegacyId::ObjectId => Some(object_id_hex(&new_object_id())),
        }
    }
}

/// A new ObjectId: 4 bytes of seconds since the epoch, 5 random bytes, a
/// 3-byte counter (the layout of MongoDB's drivers).
pub fn new_object_id() -> [u8; 12] {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    // The process's random part, drawn once (a UUIDv7's last bytes are
    // random).
    static RANDOM: std::sync::OnceLock<[u8; 5]> = std::sync::OnceLock::new();
    let random = RANDOM.get_or_init(|| {
        let b = Uuid::now_v7().into_bytes();
        [b[11], b[12], b[13], b[14], b[15]]
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut out = [0u8; 12];
    out[..4].copy_from_slice(&secs.to_be_bytes());
    out[4..9].copy_from_slice(random);
    out[9..].copy_from_slice(&n.to_be_bytes()[1..]);
    out
}

impl IdKind {
    /// Whether the new ids are UUIDs (else bigints).
    pub fn is_uuid(self) -> bool {
        match self {
            IdKind::Bigint { .. } => false,
            IdKind::Inverse { legacy } => legacy == LegacyId::Uuid,
            _ => true,
        }
    }

    /// Whether the column holds new ids to write as legacy ones (a
    /// reverse pipeline).
    pub fn is_inverse(self) -> bool {
        matches!(self, IdKind::Inverse { .. })
    }

    /// The new id for `legacy`, when it can be made without the database:
    /// `None` for sequences (the sink draws those in SQL).
    pub fn candidate(self, legacy: &str) -> Option<String> {
        match self {
            IdKind::UuidV7 => Some(Uuid::now_v7().to_string()),
            IdKind::UuidV5 { namespace_uuid } => {
                Some(Uuid::new_v5(&namespace_uuid, legacy.as_bytes()).to_string())
            }
            IdKind::Bigint { .. } | IdKind::Inverse { .. } => None,
        }
    }
}

/// What to do with a reference whose row has not arrived yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissing {
    /// Allocate the referenced row's new id now; the row gets it when it
    /// arrives.
    #[default]
    Allocate,
    /// Dead-letter the record (rule `missing_reference`) until the
    /// referenced row is there.
    DeadLetter,
}

/// A column whose values are legacy ids of `namespace`, to be written as
/// their new ids. Travels with the column in [`crate::event::Column`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdRef {
    pub namespace: String,
    pub kind: IdKind,
    /// `Allocate` for the row's own id; a reference's policy otherwise.
    pub on_missing: OnMissing,
    /// The source field path, for messages.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
    /// `Inverse { legacy: Bigint }` only: the old table's sequence that new
    /// legacy ids are drawn from (`legacy.accounts_id_seq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<String>,
}

/// Why a value cannot be a legacy id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadId(pub String);

/// The canonical text of a legacy id: an ObjectId as its 24 lowercase hex
/// digits, a string as itself, an integer or decimal as its digits, a UUID
/// hyphenated. Different kinds that print alike (`7` and `"7"`) share a
/// mapping; ids of one namespace are expected to be of one kind.
pub fn legacy_text(v: &Value) -> Result<Option<String>, BadId> {
    Ok(Some(match v {
        Value::Null => return Ok(None),
        Value::ObjectId(id) => object_id_hex(id),
        Value::Text(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Numeric(n @ Numeric::Finite(_)) => n.to_string(),
        Value::Uuid(u) => u.to_string(),
        // MongoDB's `_id` column holds the id as relaxed Extended JSON.
        Value::Json(j) => match serde_json::from_str::<serde_json::Value>(j) {
            Ok(json) => match from_extended_json(&json) {
                // Not an id form (a compound `_id`, a boolean): refused,
                // never parsed again.
                Value::Json(_) => return Err(BadId(j.clone())),
                v => return legacy_text(&v),
            },
            Err(_) => return Err(BadId(j.clone())),
        },
        other => return Err(BadId(format!("{other:?}"))),
    }))
}

/// The spellings an operator's id may be stored under: the id itself and,
/// when it has the form of an ObjectId (24 hex digits) or a UUID, its
/// lowercase form (the id map stores both lowercase). Other strings are
/// case-sensitive ids and stay as given.
pub fn lookup_forms(id: &str) -> Vec<String> {
    let id = id.trim();
    let hex = |s: &str| s.chars().all(|c| c.is_ascii_hexdigit());
    let is_object_id = id.len() == 24 && hex(id);
    let is_uuid = id.len() == 36
        && id.split('-').map(str::len).eq([8, 4, 4, 4, 12])
        && hex(&id.replace('-', ""));
    let lower = id.to_ascii_lowercase();
    if (is_object_id || is_uuid) && lower != id {
        vec![id.to_string(), lower]
    } else {
        vec![id.to_string()]
    }
}

/// An id read back from relaxed Extended JSON (`{"$oid": …}`, a string, a
/// number, `{"$numberLong": …}`); anything else stays JSON.
pub fn from_extended_json(j: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match j {
        J::String(s) => Value::Text(s.clone()),
        // Integers only: a double `_id` is refused on insert (a `Float`)
        // and must be refused the same way on delete.
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Json(n.to_string()),
        },
        J::Object(o) if o.len() == 1 => {
            let (k, v) = o.iter().next().expect("one entry");
            match (k.as_str(), v) {
                ("$oid", J::String(h)) => parse_object_id(h)
                    .map(Value::ObjectId)
                    .unwrap_or_else(|| Value::Json(j.to_string())),
                ("$numberLong" | "$numberInt", J::String(s)) => s
                    .parse()
                    .map(Value::Int)
                    .unwrap_or_else(|_| Value::Json(j.to_string())),
                ("$numberDecimal", J::String(s)) => s
                    .parse()
                    .map(Value::Numeric)
                    .unwrap_or_else(|_| Value::Json(j.to_string())),
                // A UUID `_id` (binary subtype 4): the same id as on insert.
                ("$binary", J::Object(b)) => match (b.get("base64"), b.get("subType")) {
                    (Some(J::String(data)), Some(J::String(t))) if t == "04" => base64_uuid(data)
                        .map(Value::Uuid)
                        .unwrap_or_else(|| Value::Json(j.to_string())),
                    _ => Value::Json(j.to_string()),
                },
                _ => Value::Json(j.to_string()),
            }
        }
        J::Null => Value::Null,
        other => Value::Json(other.to_string()),
    }
}

/// A UUID from the base64 of its 16 bytes.
fn base64_uuid(data: &str) -> Option<Uuid> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::with_capacity(18);
    for c in data.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        bits = bits << 6 | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    Uuid::from_slice(&out).ok()
}

fn parse_object_id(hex: &str) -> Option<[u8; 12]> {
    if hex.len() != 24 {
        return None;
    }
    let mut out = [0u8; 12];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_accept_any_case_of_hex_ids_only() {
        assert_eq!(
            lookup_forms("65A1B2C3D4E5F60718293A4B"),
            ["65A1B2C3D4E5F60718293A4B", "65a1b2c3d4e5f60718293a4b"]
        );
        assert_eq!(
            lookup_forms("0190A1B2-C3D4-7E5F-8A6B-7C8D9E0F1A2B"),
            [
                "0190A1B2-C3D4-7E5F-8A6B-7C8D9E0F1A2B",
                "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b"
            ]
        );
        // Already lowercase, or an ordinary string id: as given.
        assert_eq!(lookup_forms("65a1b2c3d4e5f60718293a4b").len(), 1);
        assert_eq!(lookup_forms("User-ABC"), ["User-ABC"]);
    }

    #[test]
    fn legacy_ids_have_one_text() {
        let oid = [
            0x64, 0xb7, 0xf0, 0xc2, 0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18,
        ];
        let hex = "64b7f0c2a1b2c3d4e5f60718";
        assert_eq!(legacy_text(&Value::ObjectId(oid)).unwrap().unwrap(), hex);
        // The MongoDB `_id` column's Extended JSON gives the same text.
        let json = Value::Json(format!(r#"{{"$oid":"{hex}"}}"#));
        assert_eq!(legacy_text(&json).unwrap().unwrap(), hex);
        assert_eq!(
            legacy_text(&Value::Json(r#""k1""#.into()))
                .unwrap()
                .unwrap(),
            "k1"
        );
        assert_eq!(
            legacy_text(&Value::Json("42".into())).unwrap().unwrap(),
            "42"
        );
        assert_eq!(legacy_text(&Value::Int(42)).unwrap().unwrap(), "42");
        assert_eq!(legacy_text(&Value::Null).unwrap(), None);
        assert!(legacy_text(&Value::Bool(true)).is_err());
    }

    #[test]
    fn fresh_legacy_ids_have_their_kind() {
        let a = LegacyId::ObjectId.fresh().unwrap();
        let b = LegacyId::ObjectId.fresh().unwrap();
        assert_eq!(a.len(), 24);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b, "the counter moves");
        // Time first: ids made later sort after (within a second, the counter).
        assert!(a < b || a[..8] != b[..8]);
        assert_eq!(LegacyId::Uuid.fresh().unwrap().len(), 36);
        assert_eq!(LegacyId::Bigint.fresh(), None);
        assert!(IdKind::Inverse {
            legacy: LegacyId::Uuid
        }
        .is_uuid());
        assert!(!IdKind::Inverse {
            legacy: LegacyId::Bigint
        }
        .is_uuid());
        assert!(IdKind::Inverse {
            legacy: LegacyId::Bigint
        }
        .is_inverse());
    }

    #[test]
    fn uuid_v5_is_derived_and_v7_is_fresh() {
        let ns = Uuid::parse_str("1b671a64-40d5-491e-99b0-da01ff1f3341").unwrap();
        let k = IdKind::UuidV5 { namespace_uuid: ns };
        assert_eq!(k.candidate("a"), k.candidate("a"));
        assert_ne!(k.candidate("a"), k.candidate("b"));
        assert_ne!(IdKind::UuidV7.candidate("a"), IdKind::UuidV7.candidate("a"));
        assert_eq!(IdKind::Bigint { start: 1 }.candidate("a"), None);
    }
}
