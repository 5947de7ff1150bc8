//! A mapping's inverse, derived (never hand-written): the mapping of the
//! reverse pipeline that `ferry rollback init` writes, from the new
//! database's tables back to the old database's (docs/rollback.md).
//!
//! Pure: the forward mapping, the new tables' catalog and, for a
//! PostgreSQL old side, the old tables' catalog in; the inverse mapping
//! and every [`Loss`] out, field by field. What is inverted:
//! - a renamed column goes back to its field (a column of the old table,
//!   or a field path of the MongoDB document: the MongoDB sink writes a
//!   dotted column as that path with `$set`);
//! - an `id_map` column goes back through the same `ferry_id_map`
//!   (`kind = "inverse"`): a new row gets a legacy id the way the old
//!   system makes one (its key's sequence, an ObjectId);
//! - decimals: the old column's type decides, exactly (a value that does
//!   not fit is dead-lettered, never rounded).
//!
//! What is not, and says so: child tables folding back into an array,
//! `rest`, dropped fields, constant (`default`-only) columns, rounded
//! columns, columns only the new database has.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use serde::Serialize;

use super::{snake_case, TargetTable};
use crate::event::TableId;
use crate::id_map::LegacyId;
use crate::mapping::{split_path, Mappings};

/// Which kind of database the forward pipeline read (the reverse writes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldSide {
    /// Rows back into the old tables, one column per field.
    Postgres,
    /// Documents back by `_id`, columns as field paths (the MongoDB sink's
    /// contract).
    Mongodb,
}

/// A table of the old PostgreSQL database, as its catalog declares it.
#[derive(Debug, Clone)]
pub struct LegacyTable {
    pub table: TargetTable,
    /// The sequence behind its (single-column) key: a `serial` or identity
    /// column's (`pg_get_serial_sequence`).
    pub key_sequence: Option<String>,
}

/// What the derivation reads.
#[derive(Debug, Clone, Copy)]
pub struct InverseInput<'a> {
    pub forward: &'a Mappings,
    pub old_side: OldSide,
    /// The new database's mapped tables (the forward targets).
    pub new_catalog: &'a HashMap<TableId, TargetTable>,
    /// The old database's tables (PostgreSQL old side; empty for MongoDB).
    pub old_catalog: &'a HashMap<TableId, LegacyTable>,
}

/// Something the reverse pipeline cannot write back as the application
/// wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// The forward mapping's key (`mappings.tables[0].columns.fee`).
    pub key: String,
    /// The field or column concerned.
    pub field: String,
    pub message: String,
    /// A loss of what the application writes: `ferry rollback init`
    /// refuses unless told to accept it. Otherwise a note.
    pub lossy: bool,
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} ({}): {}",
            if self.lossy { "LOSSY" } else { "note " },
            self.field,
            self.key,
            self.message
        )
    }
}

/// The reverse mapping file, in the mapping file's own format.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct InverseMappings {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub id_maps: BTreeMap<String, InverseIdMap>,
    pub tables: Vec<InverseTable>,
}

/// `[id_maps.<ns>]` of the reverse mapping.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InverseIdMap {
    /// Always `"inverse"`.
    pub kind: &'static str,
    pub legacy: LegacyId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<String>,
}

/// `[[tables]]` of the reverse mapping.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InverseTable {
    pub source: String,
    pub target: String,
    /// New columns with no way back (they are listed as losses).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
    pub columns: BTreeMap<String, InverseColumn>,
}

/// A column rule of the reverse mapping.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InverseColumn {
    pub from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_map: Option<String>,
}

/// The reverse mapping and what it cannot carry back.
#[derive(Debug, Clone, Default)]
pub struct Inverse {
    pub mappings: InverseMappings,
    pub losses: Vec<Loss>,
}

impl Inverse {
    /// Whether any loss is more than a note.
    pub fn is_lossy(&self) -> bool {
        self.losses.iter().any(|l| l.lossy)
    }

    /// The reverse mapping file's text.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.mappings).expect("plain data serializes")
    }
}

/// Derives the inverse of `input.forward`.
pub fn invert(input: InverseInput<'_>) -> Inverse {
    let mut out = Inverse::default();
    for (i, t) in input.forward.tables.iter().enumerate() {
        invert_table(input, i, t, &mut out);
    }
    out
}

fn loss(key: impl Into<String>, field: impl Into<String>, message: impl Into<String>) -> Loss {
    Loss {
        key: key.into(),
        field: field.into(),
        message: message.into(),
        lossy: true,
    }
}

fn note(key: impl Into<String>, field: impl Into<String>, message: impl Into<String>) -> Loss {
    Loss {
        lossy: false,
        ..loss(key, field, message)
    }
}

fn invert_table(
    input: InverseInput<'_>,
    i: usize,
    t: &crate::mapping::TableMapping,
    out: &mut Inverse,
) {
    let key = format!("mappings.tables[{i}]");
    let mongo = input.old_side == OldSide::Mongodb;
    let (Some(source), Some(target)) = (TableId::parse(&t.source), TableId::parse(&t.target))
    else {
        return;
    };
    let Some(new) = input.new_catalog.get(&target) else {
        out.losses.push(loss(
            format!("{key}.target"),
            target.to_string(),
            "the new table does not exist: nothing to read back",
        ));
        return;
    };
    let old = input.old_catalog.get(&source);
    if !mongo && old.is_none() {
        out.losses.push(loss(
            format!("{key}.source"),
            source.to_string(),
            "the old table does not exist: nothing to write back to",
        ));
        return;
    }
    let mut columns: BTreeMap<String, InverseColumn> = BTreeMap::new();
    let mut taken_new: BTreeSet<String> = BTreeSet::new();
    // Old fields (top-level) the reverse writes, to find what it does not.
    let mut written_old: BTreeSet<String> = BTreeSet::new();

    for (j, c) in t.children.iter().enumerate() {
        out.losses.push(loss(
            format!("{key}.children[{j}]"),
            format!("{}.{}", source, c.from),
            format!(
                "rows of {} do not fold back into the array {:?}: changes the application makes to them are not written back",
                c.target, c.from
            ),
        ));
        written_old.insert(split_path(&c.from)[0].clone());
    }
    if let Some(r) = &t.rest {
        out.losses.push(loss(
            format!("{key}.rest"),
            format!("{target}.{r}"),
            "`rest` is not merged back into the old fields: the fields it holds keep their old values, and a row created after cutover has none of them",
        ));
        taken_new.insert(r.clone());
    }
    for (j, d) in t.drop.iter().enumerate() {
        out.losses.push(loss(
            format!("{key}.drop[{j}]"),
            format!("{source}.{d}"),
            match mongo {
                true => "dropped forward: a document created after cutover has no such field (updates keep the old one's)",
                false => "dropped forward: the reverse pipeline writes NULL there (the column's default for a new row, if it has one)",
            },
        ));
        written_old.insert(split_path(d)[0].clone());
    }

    for (name, spec) in &t.columns {
        let ckey = format!("{key}.columns.{name}");
        let rule = spec.rule();
        taken_new.insert(name.clone());
        let Some(from) = &rule.from else {
            out.losses.push(loss(
                ckey,
                format!("{target}.{name}"),
                "a constant (`default` only) with no field behind it: what the application writes there is not written back",
            ));
            continue;
        };
        if rule.round.is_some() {
            out.losses.push(loss(
                format!("{ckey}.round"),
                format!("{target}.{name}"),
                format!("rounded forward: a row written back carries the rounded value, not the old {from:?}"),
            ));
        }
        if rule.default.is_some() && mongo {
            out.losses.push(note(
                format!("{ckey}.default"),
                format!("{source}.{from}"),
                "a document that had no such field gets the default's value written back",
            ));
        }
        let path = split_path(from);
        if path.len() > 1 && !mongo {
            out.losses.push(loss(
                ckey,
                format!("{source}.{from}"),
                format!(
                    "one key inside jsonb column {:?}: writing a key of a jsonb column back is not supported",
                    path[0]
                ),
            ));
            continue;
        }
        let old_name = from.clone();
        written_old.insert(path[0].clone());
        let id_map = rule.id_map.as_ref().map(|ns| {
            invert_id_map(
                input,
                &ckey,
                &source,
                &old_name,
                ns,
                &mut out.mappings,
                &mut out.losses,
            );
            ns.clone()
        });
        if let (Some(old), None) = (old, &rule.id_map) {
            decimal_note(
                &ckey,
                &source,
                &old.table,
                &old_name,
                new,
                name,
                &mut out.losses,
            );
        }
        if !mongo && old.is_some_and(|o| o.table.column(&old_name).is_none()) {
            out.losses.push(loss(
                ckey,
                format!("{source}.{old_name}"),
                "the old table has no such column",
            ));
            continue;
        }
        columns.insert(
            old_name,
            InverseColumn {
                from: name.clone(),
                id_map,
            },
        );
    }

    // Columns the forward pipeline filled by name (no rule, no default).
    let mut drop = Vec::new();
    for tc in &new.columns {
        if taken_new.contains(&tc.name) {
            continue;
        }
        let field = format!("{target}.{}", tc.name);
        if tc.has_default {
            out.losses.push(loss(
                format!("{key}.columns"),
                field,
                "only the new database has this column (filled by its default or the application): not written back",
            ));
            drop.push(tc.name.clone());
            continue;
        }
        // The old spelling: the same name, or with snake_case the old
        // column whose snake_case it is.
        let old_name = match (old, t.snake_case) {
            (Some(o), _) => o
                .table
                .columns
                .iter()
                .find(|c| c.name == tc.name || (t.snake_case && snake_case(&c.name) == tc.name))
                .map(|c| c.name.clone()),
            (None, false) => Some(tc.name.clone()),
            (None, true) => None,
        };
        match old_name {
            Some(o) => {
                if let Some(old) = old {
                    decimal_note(
                        &format!("{key}.columns"),
                        &source,
                        &old.table,
                        &o,
                        new,
                        &tc.name,
                        &mut out.losses,
                    );
                }
                written_old.insert(o.clone());
                columns.insert(
                    o,
                    InverseColumn {
                        from: tc.name.clone(),
                        id_map: None,
                    },
                );
            }
            None => {
                out.losses.push(loss(
                    format!("{key}.snake_case"),
                    field,
                    match mongo {
                        true => "filled by a field whose spelling snake_case hid: which field to write back is unknown",
                        false => "no old column of that name: not written back",
                    },
                ));
                drop.push(tc.name.clone());
            }
        }
    }
    // Old columns nothing writes back (PostgreSQL): NULL on every write.
    if let Some(old) = old {
        for c in &old.table.columns {
            if !written_old.contains(&c.name) && !columns.contains_key(&c.name) && !c.has_default {
                out.losses.push(loss(
                    format!("{key}.unmapped"),
                    format!("{source}.{}", c.name),
                    "no new column comes from it: the reverse pipeline writes NULL there",
                ));
            }
        }
    }
    out.mappings.tables.push(InverseTable {
        source: target.to_string(),
        target: source.to_string(),
        drop,
        columns,
    });
}

/// The reverse `[id_maps.<ns>]`: the legacy id's kind from the old side,
/// and for bigints the sequence of the table the namespace keys.
#[allow(clippy::too_many_arguments)] // one step of invert_table, its state passed explicitly
fn invert_id_map(
    input: InverseInput<'_>,
    ckey: &str,
    source: &TableId,
    old_name: &str,
    ns: &str,
    mappings: &mut InverseMappings,
    losses: &mut Vec<Loss>,
) {
    if mappings.id_maps.contains_key(ns) {
        return;
    }
    let (legacy, sequence) = match input.old_side {
        OldSide::Mongodb => (LegacyId::ObjectId, None),
        OldSide::Postgres => {
            let ty = input
                .old_catalog
                .get(source)
                .and_then(|o| o.table.column(old_name))
                .map(|c| super::coerce::base_type(&c.type_sql))
                .unwrap_or_default();
            match ty.as_str() {
                "uuid" => (LegacyId::Uuid, None),
                "bigint" | "integer" | "smallint" | "numeric" => {
                    let seq = namespace_home(input, ns).and_then(|(t, col)| {
                        let o = input.old_catalog.get(&t)?;
                        (o.table.primary_key == [col]).then(|| o.key_sequence.clone())?
                    });
                    if seq.is_none() {
                        losses.push(loss(
                            format!("{ckey}.id_map"),
                            format!("{source}.{old_name}"),
                            format!(
                                "a row created after cutover needs a legacy id of namespace {ns:?}, and the old key it keys has no sequence (serial or identity) to draw one from: give it one (CREATE SEQUENCE … OWNED BY, then ALTER COLUMN … SET DEFAULT nextval(…))"
                            ),
                        ));
                    }
                    (LegacyId::Bigint, seq)
                }
                other => {
                    losses.push(note(
                        format!("{ckey}.id_map"),
                        format!("{source}.{old_name}"),
                        format!("legacy ids are {other:?}: a row created after cutover gets a UUID's text as its legacy id"),
                    ));
                    (LegacyId::Uuid, None)
                }
            }
        }
    };
    mappings.id_maps.insert(
        ns.to_string(),
        InverseIdMap {
            kind: "inverse",
            legacy,
            sequence,
        },
    );
}

/// The old table and column whose own key namespace `ns` translates.
fn namespace_home(input: InverseInput<'_>, ns: &str) -> Option<(TableId, String)> {
    input.forward.tables.iter().find_map(|t| {
        let target = TableId::parse(&t.target)?;
        let new = input.new_catalog.get(&target)?;
        t.columns.iter().find_map(|(name, spec)| {
            let r = spec.rule();
            let from = r.from.filter(|f| !f.contains('.'))?;
            (r.id_map.as_deref() == Some(ns) && new.primary_key == [name.clone()])
                .then(|| (TableId::parse(&t.source), from))
                .and_then(|(s, f)| Some((s?, f)))
        })
    })
}

/// A note when the new column is a different numeric than the old one.
fn decimal_note(
    key: &str,
    source: &TableId,
    old: &TargetTable,
    old_name: &str,
    new: &TargetTable,
    new_name: &str,
    losses: &mut Vec<Loss>,
) {
    let (Some(o), Some(n)) = (old.column(old_name), new.column(new_name)) else {
        return;
    };
    let numeric = |t: &str| super::coerce::base_type(t) == "numeric";
    if numeric(&o.type_sql) && numeric(&n.type_sql) && o.type_sql != n.type_sql {
        losses.push(note(
            key,
            format!("{source}.{old_name}"),
            format!(
                "{} back into {}: exact; a value that does not fit is dead-lettered (needs_rounding, too_large), never rounded",
                n.type_sql, o.type_sql
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::TargetColumn;

    fn col(name: &str, ty: &str, has_default: bool) -> TargetColumn {
        TargetColumn {
            name: name.into(),
            type_sql: ty.into(),
            nullable: true,
            has_default,
        }
    }

    fn table(id: &str, pk: &str, cols: Vec<TargetColumn>) -> TargetTable {
        TargetTable {
            id: TableId::parse(id).unwrap(),
            columns: cols,
            primary_key: vec![pk.into()],
        }
    }

    const PG: &str = r#"
[id_maps.accounts]
kind = "uuid_v7"

[[tables]]
source = "legacy.accounts"
target = "public.accounts"
[tables.columns]
id = { from = "id", id_map = "accounts" }
name = "full_name"
balance = "balance"
"#;

    fn pg_catalogs() -> (HashMap<TableId, TargetTable>, HashMap<TableId, LegacyTable>) {
        let new = table(
            "public.accounts",
            "id",
            vec![
                col("id", "uuid", false),
                col("name", "text", false),
                col("balance", "numeric(14,2)", false),
                col("status", "text", false),
            ],
        );
        let old = table(
            "legacy.accounts",
            "id",
            vec![
                col("id", "bigint", true),
                col("full_name", "text", false),
                col("balance", "numeric(12,2)", false),
                col("status", "text", false),
            ],
        );
        (
            HashMap::from([(new.id.clone(), new)]),
            HashMap::from([(
                old.id.clone(),
                LegacyTable {
                    table: old,
                    key_sequence: Some("legacy.accounts_id_seq".into()),
                },
            )]),
        )
    }

    #[test]
    fn renames_and_ids_go_back_through_the_same_map() {
        let m = Mappings::from_toml(PG).unwrap();
        let (new, old) = pg_catalogs();
        let inv = invert(InverseInput {
            forward: &m,
            old_side: OldSide::Postgres,
            new_catalog: &new,
            old_catalog: &old,
        });
        assert!(!inv.is_lossy(), "{:?}", inv.losses);
        let t = &inv.mappings.tables[0];
        assert_eq!(
            (t.source.as_str(), t.target.as_str()),
            ("public.accounts", "legacy.accounts")
        );
        assert_eq!(t.columns["full_name"].from, "name");
        assert_eq!(t.columns["id"].id_map.as_deref(), Some("accounts"));
        // Filled by name forward: back by name.
        assert_eq!(t.columns["status"].from, "status");
        assert_eq!(
            inv.mappings.id_maps["accounts"],
            InverseIdMap {
                kind: "inverse",
                legacy: LegacyId::Bigint,
                sequence: Some("legacy.accounts_id_seq".into())
            }
        );
        // Different numerics: a note, not a loss.
        assert!(inv
            .losses
            .iter()
            .any(|l| !l.lossy && l.field == "legacy.accounts.balance"));
        // The file it writes is a mapping Ferry reads.
        let text = inv.to_toml();
        let back = Mappings::from_toml(&text).unwrap();
        assert_eq!(back.tables[0].source, "public.accounts");
        assert_eq!(
            back.id_kind("accounts"),
            Some(crate::id_map::IdKind::Inverse {
                legacy: LegacyId::Bigint
            })
        );
    }

    #[test]
    fn what_cannot_be_inverted_is_said_field_by_field() {
        let text = r#"
[id_maps.accounts]
kind = "uuid_v7"

[[tables]]
source = "legacy.accounts"
target = "public.accounts"
drop = ["status"]
[tables.columns]
id = { from = "id", id_map = "accounts" }
name = "full_name"
balance = { from = "balance", round = "half_even" }
currency = { default = "EUR" }
meta = "extra.city"
"#;
        let m = Mappings::from_toml(text).unwrap();
        let (mut new, mut old) = pg_catalogs();
        let n = new.get_mut(&TableId::new("public", "accounts")).unwrap();
        n.columns.push(col("currency", "text", false));
        n.columns.push(col("meta", "text", false));
        n.columns.push(col("loaded_at", "timestamptz", true));
        n.columns.retain(|c| c.name != "status");
        old.get_mut(&TableId::new("legacy", "accounts"))
            .unwrap()
            .key_sequence = None;
        let inv = invert(InverseInput {
            forward: &m,
            old_side: OldSide::Postgres,
            new_catalog: &new,
            old_catalog: &old,
        });
        assert!(inv.is_lossy());
        let lossy: Vec<&str> = inv
            .losses
            .iter()
            .filter(|l| l.lossy)
            .map(|l| l.field.as_str())
            .collect();
        for f in [
            "public.accounts.balance",    // rounded
            "public.accounts.currency",   // default only
            "legacy.accounts.extra.city", // into jsonb
            "legacy.accounts.status",     // dropped
            "public.accounts.loaded_at",  // only the new side has it
            "legacy.accounts.id",         // no sequence for new rows
        ] {
            assert!(lossy.contains(&f), "{f} missing from {lossy:?}");
        }
        assert_eq!(inv.mappings.tables[0].drop, vec!["loaded_at".to_string()]);
    }

    #[test]
    fn mongodb_gets_id_and_field_paths() {
        let m = Mappings::from_toml(
            r#"
[id_maps.escrows]
kind = "uuid_v7"
[id_maps.users]
kind = "uuid_v7"
[[tables]]
source = "shop.escrows"
target = "public.escrows"
snake_case = true
rest = "extra"
[tables.columns]
id = { from = "_id", id_map = "escrows" }
buyer_id = { from = "buyerId", id_map = "users" }
amount = "amount"
city = "delivery.address.city"
[[tables.children]]
from = "items"
target = "public.escrow_items"
parent_key = ["escrow_id"]
position = "position"
"#,
        )
        .unwrap();
        let new = table(
            "public.escrows",
            "id",
            vec![
                col("id", "uuid", false),
                col("buyer_id", "uuid", false),
                col("amount", "numeric(12,2)", false),
                col("city", "text", false),
                col("extra", "jsonb", false),
                col("status", "text", false),
                col("note_text", "text", false),
            ],
        );
        let cat = HashMap::from([(new.id.clone(), new)]);
        let inv = invert(InverseInput {
            forward: &m,
            old_side: OldSide::Mongodb,
            new_catalog: &cat,
            old_catalog: &HashMap::new(),
        });
        let t = &inv.mappings.tables[0];
        assert_eq!(t.target, "shop.escrows");
        assert_eq!(t.columns["_id"].from, "id");
        assert_eq!(t.columns["_id"].id_map.as_deref(), Some("escrows"));
        assert_eq!(t.columns["buyerId"].id_map.as_deref(), Some("users"));
        assert_eq!(t.columns["delivery.address.city"].from, "city");
        assert_eq!(inv.mappings.id_maps["users"].legacy, LegacyId::ObjectId);
        // snake_case hid the spelling of the fields filled by name.
        assert!(!t.columns.contains_key("status"));
        let lossy: Vec<&str> = inv
            .losses
            .iter()
            .filter(|l| l.lossy)
            .map(|l| l.field.as_str())
            .collect();
        for f in [
            "shop.escrows.items",
            "public.escrows.extra",
            "public.escrows.status",
        ] {
            assert!(lossy.contains(&f), "{f} missing from {lossy:?}");
        }
        // Dotted column names are quoted keys of the mapping file.
        assert!(
            inv.to_toml()
                .contains("[tables.columns.\"delivery.address.city\"]"),
            "{}",
            inv.to_toml()
        );
    }
}
