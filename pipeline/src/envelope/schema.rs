//! The Avro schema of a table's envelope, and the plan that writes and
//! reads it: each column's natural Avro type from its SQL type.

use std::collections::HashMap;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::Value as Json;

use super::canonical::{canonical_form, rabin_fingerprint};
use super::{invalid, EnvelopeError, MARKER_PREFIX, TABLE_ATTRIBUTE};
use crate::decimal::MAX_PRECISION;
use crate::event::{TableId, TableSchema};
use crate::value::TemporalKind;

/// Everything needed to write and read one table schema's envelope.
#[derive(Debug)]
pub(super) struct SchemaPlan {
    pub(super) table: Arc<TableSchema>,
    /// `serde_json` text of the table schema (the `ferry.table` attribute
    /// and the JSON encoding's `schema`).
    pub(super) table_json: String,
    pub(super) columns: Vec<ColumnPlan>,
    /// Avro field name → column index.
    pub(super) field_index: HashMap<String, usize>,
    pub(super) avro_json: String,
    pub(super) fingerprint: u64,
}

#[derive(Debug)]
pub(super) struct ColumnPlan {
    /// The Avro field name: the column name made a valid, unique Avro name.
    pub(super) field: String,
    pub(super) avro_type: AvroType,
}

/// A column's natural Avro type, used when the value has the variant the
/// column's type implies; every other value goes to `ferry.Value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AvroType {
    /// Arrays: `["null", "ferry.Value"]`, no natural branch.
    Generic,
    Boolean,
    Int,
    Long,
    Double,
    /// `numeric(p,s)` with 1 ≤ p ≤ 1000 and 0 ≤ s ≤ p (what Avro's decimal
    /// allows).
    Decimal {
        precision: u32,
        scale: u32,
    },
    /// Unconstrained numeric, and numeric typmods Avro's decimal cannot
    /// express (negative scale, scale above precision): the digit text.
    NumericText,
    Text,
    Uuid,
    Bytes,
    Temporal(TemporalKind),
    Json,
}

impl AvroType {
    /// Union index of the `ferry.Value` branch.
    pub(super) fn generic_branch(self) -> i64 {
        if self == AvroType::Generic {
            1
        } else {
            2
        }
    }

    pub(super) fn schema_json(self) -> Option<String> {
        Some(match self {
            AvroType::Generic => return None,
            AvroType::Boolean => "\"boolean\"".into(),
            AvroType::Int => "\"int\"".into(),
            AvroType::Long => "\"long\"".into(),
            AvroType::Double => "\"double\"".into(),
            AvroType::Decimal { precision, scale } => format!(
                r#"{{"type":"bytes","logicalType":"decimal","precision":{precision},"scale":{scale}}}"#
            ),
            AvroType::NumericText | AvroType::Text => "\"string\"".into(),
            AvroType::Uuid => {
                r#"{"type":"string","logicalType":"uuid","connect.name":"io.debezium.data.Uuid"}"#
                    .into()
            }
            AvroType::Bytes => "\"bytes\"".into(),
            AvroType::Temporal(k) => format!(
                r#"{{"type":"string","connect.name":"{}"}}"#,
                temporal_connect_name(k)
            ),
            AvroType::Json => r#"{"type":"string","connect.name":"io.debezium.data.Json"}"#.into(),
        })
    }
}

/// Debezium's names for its ISO-string temporal types. Ferry's text is
/// PostgreSQL's ISO output (`2024-01-02 03:04:05.5+00`, `infinity`, BC
/// dates, `1 day 02:00:00`), close to but not always ISO 8601.
pub(super) fn temporal_connect_name(k: TemporalKind) -> &'static str {
    match k {
        TemporalKind::Date => "io.debezium.time.IsoDate",
        TemporalKind::Time => "io.debezium.time.IsoTime",
        TemporalKind::TimeTz => "io.debezium.time.ZonedTime",
        TemporalKind::Timestamp => "io.debezium.time.IsoTimestamp",
        TemporalKind::Timestamptz => "io.debezium.time.ZonedTimestamp",
        TemporalKind::Interval => "io.debezium.time.Interval",
    }
}

/// Symbols of `ferry.TemporalKind`, in enum order; also the JSON tags.
pub(super) const TEMPORAL_KINDS: [(TemporalKind, &str); 6] = [
    (TemporalKind::Date, "date"),
    (TemporalKind::Time, "time"),
    (TemporalKind::TimeTz, "timetz"),
    (TemporalKind::Timestamp, "timestamp"),
    (TemporalKind::Timestamptz, "timestamptz"),
    (TemporalKind::Interval, "interval"),
];

pub(super) fn temporal_index(k: TemporalKind) -> usize {
    match k {
        TemporalKind::Date => 0,
        TemporalKind::Time => 1,
        TemporalKind::TimeTz => 2,
        TemporalKind::Timestamp => 3,
        TemporalKind::Timestamptz => 4,
        TemporalKind::Interval => 5,
    }
}

/// The natural Avro type of a column from its `type_sql` (PostgreSQL's
/// `format_type` text, or the names the MongoDB source uses).
pub(super) fn classify(type_sql: &str, is_enum: bool) -> AvroType {
    if is_enum {
        return AvroType::Text;
    }
    let lower = type_sql.trim().to_ascii_lowercase();
    if lower.ends_with("[]") {
        return AvroType::Generic;
    }
    let t = lower.strip_prefix("pg_catalog.").unwrap_or(&lower);
    if let Some(c) = classify_numeric(t) {
        return c;
    }
    // Drop modifiers anywhere ("timestamp(3) with time zone",
    // "character varying(10)") and normalize spaces.
    let mut base = String::with_capacity(t.len());
    let mut depth = 0u32;
    for ch in t.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            c if depth == 0 => base.push(c),
            _ => {}
        }
    }
    let base = base.split_whitespace().collect::<Vec<_>>().join(" ");
    match base.as_str() {
        "boolean" | "bool" => AvroType::Boolean,
        "smallint" | "int2" | "integer" | "int" | "int4" => AvroType::Int,
        "bigint" | "int8" | "oid" => AvroType::Long,
        "real" | "float4" | "double precision" | "float8" | "float" => AvroType::Double,
        "uuid" => AvroType::Uuid,
        "bytea" => AvroType::Bytes,
        "date" => AvroType::Temporal(TemporalKind::Date),
        "time" | "time without time zone" => AvroType::Temporal(TemporalKind::Time),
        "timetz" | "time with time zone" => AvroType::Temporal(TemporalKind::TimeTz),
        "timestamp" | "timestamp without time zone" => AvroType::Temporal(TemporalKind::Timestamp),
        "timestamptz" | "timestamp with time zone" => AvroType::Temporal(TemporalKind::Timestamptz),
        "json" | "jsonb" => AvroType::Json,
        b if b == "interval" || b.starts_with("interval ") => {
            AvroType::Temporal(TemporalKind::Interval)
        }
        _ => AvroType::Text,
    }
}

/// `numeric`, `numeric(p)`, `numeric(p,s)` (and `decimal…`); `None` when
/// the type is not numeric at all.
pub(super) fn classify_numeric(t: &str) -> Option<AvroType> {
    let rest = t
        .strip_prefix("numeric")
        .or_else(|| t.strip_prefix("decimal"))?
        .trim();
    if rest.is_empty() {
        return Some(AvroType::NumericText);
    }
    let inner = rest.strip_prefix('(')?;
    let parsed = inner.strip_suffix(')').and_then(|inner| {
        let mut parts = inner.split(',').map(str::trim);
        let p: i64 = parts.next()?.parse().ok()?;
        let s: i64 = match parts.next() {
            None => 0,
            Some(s) => s.parse().ok()?,
        };
        parts.next().is_none().then_some((p, s))
    });
    Some(match parsed {
        Some((p, s)) if (1..=i64::from(MAX_PRECISION)).contains(&p) && (0..=p).contains(&s) => {
            AvroType::Decimal {
                precision: p as u32,
                scale: s as u32,
            }
        }
        _ => AvroType::NumericText,
    })
}

/// A valid Avro name: characters outside `[A-Za-z0-9_]` become `_`, and a
/// leading digit (or nothing) gets a `_` in front.
pub(super) fn avro_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// `ferry.<schema>.<table>`, each part a valid Avro name.
pub(super) fn namespace(id: &TableId) -> String {
    format!("ferry.{}.{}", avro_name(&id.schema), avro_name(&id.name))
}

/// The recursive generic value type; defined at its first use in a schema.
pub(super) const FERRY_VALUE_SCHEMA: &str = concat!(
    r#"{"type":"record","name":"Value","namespace":"ferry","fields":[{"name":"v","type":["#,
    r#""null","boolean","long","double","#,
    r#"{"type":"record","name":"Numeric","fields":[{"name":"text","type":"string"}]},"#,
    r#""string","#,
    r#"{"type":"record","name":"Json","fields":[{"name":"text","type":"string"}]},"#,
    r#"{"type":"fixed","name":"Uuid","size":16},"#,
    r#""bytes","#,
    r#"{"type":"record","name":"Temporal","fields":[{"name":"kind","type":{"type":"enum","name":"TemporalKind","symbols":["date","time","timetz","timestamp","timestamptz","interval"]}},{"name":"text","type":"string"}]},"#,
    r#"{"type":"record","name":"Array","fields":[{"name":"items","type":{"type":"array","items":"ferry.Value"}}]},"#,
    r#"{"type":"fixed","name":"ObjectId","size":12},"#,
    r#"{"type":"record","name":"Document","fields":[{"name":"fields","type":{"type":"array","items":{"type":"record","name":"Field","fields":[{"name":"name","type":"string"},{"name":"value","type":"ferry.Value"}]}}}]}"#,
    r#"]}]}"#
);

pub(super) const SOURCE_SCHEMA: &str = concat!(
    r#"{"type":"record","name":"Source","namespace":"ferry","fields":["#,
    r#"{"name":"connector","type":"string"},"#,
    r#"{"name":"name","type":"string"},"#,
    r#"{"name":"schema","type":"string"},"#,
    r#"{"name":"table","type":"string"},"#,
    r#"{"name":"commit_lsn","type":"long"},"#,
    r#"{"name":"ordinal","type":"long"},"#,
    r#"{"name":"xid","type":["null","long"],"default":null},"#,
    r#"{"name":"resume_token","type":["null","string"],"default":null},"#,
    r#"{"name":"ts_ms","type":"long"},"#,
    r#"{"name":"ts_us","type":"long"},"#,
    r#"{"name":"snapshot","type":"boolean","default":false}"#,
    r#"]}"#
);

impl SchemaPlan {
    /// The plan of `table`, and the Parsing Canonical Form of its schema.
    /// `marker` overrides the marker field's name (a decoder keeps the
    /// writer's, so that a change in how `TableSchema` serializes does not
    /// orphan old schemas).
    pub(super) fn build(
        table: Arc<TableSchema>,
        marker: Option<&str>,
    ) -> Result<(SchemaPlan, String), EnvelopeError> {
        if let Some(&i) = table
            .primary_key
            .iter()
            .find(|&&i| i >= table.columns.len())
        {
            return Err(invalid(format!(
                "table {}: key column {i} out of range",
                table.id
            )));
        }
        let table_json = serde_json::to_string(&*table)
            .map_err(|e| invalid(format!("table {}: {e}", table.id)))?;
        let mut used = HashSet::new();
        let mut columns = Vec::with_capacity(table.columns.len());
        let mut field_index = HashMap::with_capacity(table.columns.len());
        for (i, c) in table.columns.iter().enumerate() {
            let base = avro_name(&c.name);
            let mut field = base.clone();
            let mut n = 2;
            while used.contains(&field) {
                field = format!("{base}_{n}");
                n += 1;
            }
            used.insert(field.clone());
            field_index.insert(field.clone(), i);
            columns.push(ColumnPlan {
                field,
                avro_type: classify(&c.type_sql, c.enum_labels.is_some()),
            });
        }
        let marker = match marker {
            Some(m) => m.to_owned(),
            None => format!(
                "{MARKER_PREFIX}{:016x}",
                rabin_fingerprint(table_json.as_bytes())
            ),
        };
        let avro_json = avro_schema(&table.id, &table_json, &columns, &marker);
        let parsed: Json = serde_json::from_str(&avro_json)
            .map_err(|e| invalid(format!("generated schema of {}: {e}", table.id)))?;
        let canonical = canonical_form(&parsed)?;
        let plan = SchemaPlan {
            fingerprint: rabin_fingerprint(canonical.as_bytes()),
            table,
            table_json,
            columns,
            field_index,
            avro_json,
        };
        Ok((plan, canonical))
    }
}

pub(super) fn avro_schema(
    id: &TableId,
    table_json: &str,
    columns: &[ColumnPlan],
    marker: &str,
) -> String {
    let ns = namespace(id);
    let mut s = String::with_capacity(
        FERRY_VALUE_SCHEMA.len()
            + SOURCE_SCHEMA.len()
            + table_json.len()
            + 96 * columns.len()
            + 512,
    );
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        r#"{{"type":"record","name":"Envelope","namespace":"{ns}","{TABLE_ATTRIBUTE}":{table_json},"fields":["#
    );
    s.push_str(r#"{"name":"before","type":["null",{"type":"record","name":"Value","fields":["#);
    let mut generic_defined = false;
    for (i, c) in columns.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, r#"{{"name":"{}","type":["null","#, c.field);
        if let Some(t) = c.avro_type.schema_json() {
            s.push_str(&t);
            s.push(',');
        }
        if generic_defined {
            s.push_str("\"ferry.Value\"");
        } else {
            s.push_str(FERRY_VALUE_SCHEMA);
            generic_defined = true;
        }
        // Defaults keep adding and dropping columns compatible for a
        // registry.
        s.push_str(r#"],"default":null}"#);
    }
    s.push_str(r#"]}],"default":null},"#);
    let _ = write!(
        s,
        r#"{{"name":"after","type":["null","{ns}.Value"],"default":null}},"#
    );
    s.push_str(r#"{"name":"unchanged","type":{"type":"array","items":"string"},"default":[]},"#);
    s.push_str(r#"{"name":"op","type":"string"},"#);
    let _ = write!(s, r#"{{"name":"source","type":{SOURCE_SCHEMA}}},"#);
    s.push_str(r#"{"name":"ts_ms","type":"long"},"#);
    let _ = write!(s, r#"{{"name":"{marker}","type":"null","default":null}}"#);
    s.push_str("]}");
    s
}
