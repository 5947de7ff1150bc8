//! The mapping file: how source tables and collections become rows of the
//! target's tables (docs/mappings.md is the user's guide).
//!
//! Like the main configuration: serde with `deny_unknown_fields`, then a
//! pure [`Mappings::validate`] whose errors name the key. What depends on
//! the live target (column types, keys, NOT NULL) is checked when the
//! mapping is compiled against the target's catalog
//! ([`crate::transform::Transformer::compile`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;
use uuid::Uuid;

use crate::decimal::RoundingMode;
use crate::error::ConfigError;
use crate::event::TableId;
use crate::id_map::{IdKind, LegacyId, OnMissing};

/// The whole mapping file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mappings {
    /// Id-map namespaces by name.
    #[serde(default)]
    pub id_maps: BTreeMap<String, IdMapSpec>,
    #[serde(default)]
    pub tables: Vec<TableMapping>,
}

/// `[id_maps.<namespace>]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdMapSpec {
    #[serde(default)]
    pub kind: IdKindName,
    /// `uuid_v5` only; default: UUIDv5 of the URL namespace and
    /// `ferry:id-map:<namespace>`.
    pub namespace_uuid: Option<Uuid>,
    /// `bigint` only: the sequence's first value (default 1).
    pub start: Option<i64>,
    /// `inverse` only: the kind of legacy id a row created after cutover
    /// gets (`bigint`, `object_id`, `uuid`).
    pub legacy: Option<LegacyId>,
    /// `inverse` with `legacy = "bigint"`: the old table's sequence new
    /// legacy ids are drawn from.
    pub sequence: Option<String>,
}

/// `kind` of an id map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdKindName {
    #[default]
    UuidV7,
    UuidV5,
    Bigint,
    /// A reverse pipeline's: new ids back to legacy ids through the forward
    /// pipeline's map (written by `ferry rollback init`).
    Inverse,
}

/// What happens to a field that no rule takes, when there is no `rest`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmapped {
    /// Dead-letter the record (rule `unmapped_field`).
    #[default]
    Reject,
    /// Leave the field out.
    Drop,
}

/// `[[tables]]`: one source table or collection → one target table (and
/// its child tables).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableMapping {
    /// `schema.table`, or `database.collection` for MongoDB.
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub snake_case: bool,
    pub rest: Option<String>,
    #[serde(default)]
    pub drop: Vec<String>,
    #[serde(default)]
    pub unmapped: Unmapped,
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnSpec>,
    #[serde(default)]
    pub children: Vec<ChildMapping>,
}

/// `[[tables.children]]`: an array of subdocuments → rows of a child table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildMapping {
    /// Path of the array in the parent record.
    pub from: String,
    pub target: String,
    /// Child columns receiving the parent's key, in the parent's key order.
    pub parent_key: Vec<String>,
    /// Child column receiving the element's index (from 0).
    pub position: String,
    /// For an array of scalars (strings, numbers, ObjectIds…): the child
    /// column receiving each element. The element is then the field of
    /// that name: it maps to the column by name, or through a rule of the
    /// same name (`seller_id = { from = "seller_id", id_map = "users" }`
    /// translates every element through the id map).
    pub value: Option<String>,
    #[serde(default)]
    pub snake_case: bool,
    pub rest: Option<String>,
    #[serde(default)]
    pub drop: Vec<String>,
    #[serde(default)]
    pub unmapped: Unmapped,
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnSpec>,
}

/// A column's rule: a path (short form) or a table.
#[derive(Debug, Clone)]
pub enum ColumnSpec {
    Path(String),
    Rule(ColumnRule),
}

// By hand rather than `#[serde(untagged)]`: an untagged enum buffers the
// table and reports only "did not match any variant", where this keeps
// serde's own message and the full key (`columns.amount.round`).
impl<'de> Deserialize<'de> for ColumnSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Spec;
        impl<'de> serde::de::Visitor<'de> for Spec {
            type Value = ColumnSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field path or a table { from = …, … }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ColumnSpec, E> {
                Ok(ColumnSpec::Path(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ColumnSpec, A::Error> {
                ColumnRule::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(ColumnSpec::Rule)
            }
        }
        d.deserialize_any(Spec)
    }
}

/// The long form of a column's rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnRule {
    pub from: Option<String>,
    pub id_map: Option<String>,
    pub on_missing: Option<OnMissing>,
    pub default: Option<toml::Value>,
    pub round: Option<RoundingMode>,
}

impl ColumnSpec {
    /// The long form of either spelling.
    pub fn rule(&self) -> ColumnRule {
        match self {
            ColumnSpec::Path(p) => ColumnRule {
                from: Some(p.clone()),
                ..ColumnRule::default()
            },
            ColumnSpec::Rule(r) => r.clone(),
        }
    }
}

/// A field path: `a.b.c` → `["a", "b", "c"]`.
pub fn split_path(path: &str) -> Vec<String> {
    path.split('.').map(str::to_string).collect()
}

fn check_path(key: &str, path: &str) -> Result<(), ConfigError> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(err(
            key,
            format!("{path:?} is not a field path (`a` or `a.b.c`)"),
        ));
    }
    Ok(())
}

fn err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

impl Mappings {
    /// Reads, deserializes and validates a mapping file. Errors name the
    /// key (`mappings.tables[1].columns.amount.round`).
    pub fn load(path: &Path) -> Result<Mappings, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("pipeline.mappings", format!("{}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    /// Parses and validates mapping TOML.
    pub fn from_toml(text: &str) -> Result<Mappings, ConfigError> {
        let value = crate::error::parse_toml(text, "mappings")?;
        let m: Mappings = crate::error::deserialize_toml(value, "mappings")?;
        m.validate()?;
        Ok(m)
    }

    /// The id kind of a namespace (validated to exist).
    pub fn id_kind(&self, namespace: &str) -> Option<IdKind> {
        let spec = self.id_maps.get(namespace)?;
        Some(match spec.kind {
            IdKindName::UuidV7 => IdKind::UuidV7,
            IdKindName::UuidV5 => IdKind::UuidV5 {
                namespace_uuid: spec.namespace_uuid.unwrap_or_else(|| {
                    Uuid::new_v5(
                        &Uuid::NAMESPACE_URL,
                        format!("ferry:id-map:{namespace}").as_bytes(),
                    )
                }),
            },
            IdKindName::Bigint => IdKind::Bigint {
                start: spec.start.unwrap_or(1),
            },
            IdKindName::Inverse => IdKind::Inverse {
                legacy: spec.legacy.unwrap_or_default(),
            },
        })
    }

    /// Pure checks: no I/O, every error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (ns, spec) in &self.id_maps {
            let key = format!("mappings.id_maps.{ns}");
            if ns.is_empty() {
                return Err(err(key, "a namespace needs a name"));
            }
            if spec.namespace_uuid.is_some() && spec.kind != IdKindName::UuidV5 {
                return Err(err(
                    format!("{key}.namespace_uuid"),
                    "only for kind = \"uuid_v5\"",
                ));
            }
            if spec.start.is_some() && spec.kind != IdKindName::Bigint {
                return Err(err(format!("{key}.start"), "only for kind = \"bigint\""));
            }
            let inverse = spec.kind == IdKindName::Inverse;
            if spec.legacy.is_some() && !inverse {
                return Err(err(format!("{key}.legacy"), "only for kind = \"inverse\""));
            }
            if spec.sequence.is_some()
                && !(inverse && spec.legacy.unwrap_or_default() == LegacyId::Bigint)
            {
                return Err(err(
                    format!("{key}.sequence"),
                    "only for kind = \"inverse\" with legacy = \"bigint\"",
                ));
            }
        }
        let mut sources = BTreeSet::new();
        let mut targets = BTreeSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            let key = format!("mappings.tables[{i}]");
            let source = TableId::parse(&t.source).ok_or_else(|| {
                err(
                    format!("{key}.source"),
                    format!("{:?} is not `schema.table`", t.source),
                )
            })?;
            if !sources.insert(source) {
                return Err(err(
                    format!("{key}.source"),
                    format!("{:?} is mapped twice", t.source),
                ));
            }
            let mut check_target = |k: String, target: &str| -> Result<(), ConfigError> {
                let id = TableId::parse(target)
                    .ok_or_else(|| err(k.clone(), format!("{target:?} is not `schema.table`")))?;
                if !targets.insert(id) {
                    return Err(err(k, format!("{target:?} is the target of two mappings")));
                }
                Ok(())
            };
            check_target(format!("{key}.target"), &t.target)?;
            self.check_rules(&key, &t.drop, &t.columns, t.rest.as_deref())?;
            for (j, c) in t.children.iter().enumerate() {
                let ckey = format!("{key}.children[{j}]");
                check_target(format!("{ckey}.target"), &c.target)?;
                check_path(&format!("{ckey}.from"), &c.from)?;
                if c.parent_key.is_empty() {
                    return Err(err(
                        format!("{ckey}.parent_key"),
                        "name the child columns that receive the parent's key",
                    ));
                }
                if c.position.is_empty() {
                    return Err(err(format!("{ckey}.position"), "name a column"));
                }
                let reserved: Vec<&String> = c.parent_key.iter().chain([&c.position]).collect();
                if let Some(col) = c.columns.keys().find(|k| reserved.contains(k)) {
                    return Err(err(
                        format!("{ckey}.columns.{col}"),
                        "this column receives the parent's key or the position already",
                    ));
                }
                self.check_rules(&ckey, &c.drop, &c.columns, c.rest.as_deref())?;
            }
        }
        Ok(())
    }

    fn check_rules(
        &self,
        key: &str,
        drop: &[String],
        columns: &BTreeMap<String, ColumnSpec>,
        rest: Option<&str>,
    ) -> Result<(), ConfigError> {
        for (i, p) in drop.iter().enumerate() {
            check_path(&format!("{key}.drop[{i}]"), p)?;
        }
        if let Some(r) = rest {
            if columns.contains_key(r) {
                return Err(err(
                    format!("{key}.rest"),
                    format!("{r:?} also has a column rule"),
                ));
            }
        }
        for (name, spec) in columns {
            let ckey = format!("{key}.columns.{name}");
            let rule = spec.rule();
            if let Some(from) = &rule.from {
                check_path(&format!("{ckey}.from"), from)?;
            }
            if rule.from.is_none() && rule.default.is_none() {
                return Err(err(ckey, "give `from` (a field path) or a `default`"));
            }
            match &rule.id_map {
                Some(ns) if !self.id_maps.contains_key(ns) => {
                    return Err(err(
                        format!("{ckey}.id_map"),
                        format!("no [id_maps.{ns}] is declared"),
                    ))
                }
                Some(_) if rule.round.is_some() => {
                    return Err(err(format!("{ckey}.round"), "an id is not rounded"))
                }
                None if rule.on_missing.is_some() => {
                    return Err(err(format!("{ckey}.on_missing"), "only with `id_map`"))
                }
                _ => {}
            }
            match &rule.default {
                Some(toml::Value::Float(_)) => {
                    return Err(err(
                        format!("{ckey}.default"),
                        "write decimal defaults as strings (\"0.00\"): a TOML float is binary",
                    ))
                }
                Some(toml::Value::Array(_) | toml::Value::Table(_)) => {
                    return Err(err(
                        format!("{ckey}.default"),
                        "a default is a string, an integer, a boolean or a date",
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[id_maps.users]
kind = "uuid_v7"
[id_maps.pay]
kind = "bigint"
start = 1000

[[tables]]
source = "shop.payments"
target = "public.payments"
snake_case = true
rest = "extra"
drop = ["__v"]
[tables.columns]
id = { from = "_id", id_map = "pay" }
user_id = { from = "userId", id_map = "users", on_missing = "dead_letter" }
amount = { from = "amount", round = "half_even" }
city = "delivery.address.city"
status = { from = "status", default = "pending" }

[[tables.children]]
from = "items"
target = "public.payment_items"
parent_key = ["payment_id"]
position = "position"
[tables.children.columns]
sku = "sku"
"#;

    #[test]
    fn a_full_mapping_loads() {
        let m = Mappings::from_toml(GOOD).unwrap();
        assert_eq!(m.tables[0].columns.len(), 5);
        assert_eq!(m.id_kind("pay"), Some(IdKind::Bigint { start: 1000 }));
        let r = m.tables[0].columns["user_id"].rule();
        assert_eq!(r.on_missing, Some(OnMissing::DeadLetter));
    }

    #[test]
    fn errors_name_the_key() {
        let bad = |from: &str, to: &str| {
            Mappings::from_toml(&GOOD.replace(from, to))
                .unwrap_err()
                .to_string()
        };
        assert!(bad("\"pay\" }", "\"nope\" }").contains("columns.id.id_map"));
        assert!(bad("default = \"pending\"", "default = 1.5").contains("columns.status.default"));
        assert!(bad("snake_case = true", "snake_case = true\nbogus = 1").contains("bogus"));
        assert!(bad(
            "target = \"public.payment_items\"",
            "target = \"public.payments\""
        )
        .contains("children[0].target"));
        assert!(bad("kind = \"bigint\"", "kind = \"uuid_v7\"").contains("id_maps.pay.start"));
        assert!(bad(
            "city = \"delivery.address.city\"",
            "city = \"delivery..city\""
        )
        .contains("columns.city"));
    }

    #[test]
    fn serde_errors_name_the_full_key() {
        let bad = |from: &str, to: &str| Mappings::from_toml(&GOOD.replace(from, to)).unwrap_err();
        let e = bad("round = \"half_even\"", "round = \"sideways\"");
        assert_eq!(e.key, "mappings.tables[0].columns.amount.round", "{e}");
        assert!(e.message.contains("sideways"), "{e}");
        let e = bad("snake_case = true", "snake_case = \"yes\"");
        assert_eq!(e.key, "mappings.tables[0].snake_case", "{e}");
        let e = bad("sku = \"sku\"", "sku = 3");
        assert_eq!(e.key, "mappings.tables[0].children[0].columns.sku", "{e}");
        let e = bad("start = 1000", "start = 1000\nstart = 1");
        assert_eq!(e.key, "mappings", "{e}");
        assert!(e.message.contains("line 7"), "{e}");
    }
}
