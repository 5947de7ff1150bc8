//! Prerequisite checks for `ferry check` with a Convex source.

use ferry_pipeline::config::ConvexSourceConfig;
use ferry_pipeline::prerequisite::Finding;

use crate::client::Client;

/// Checks the source: the deployment answers the export routes with this
/// deploy key (a 403 `StreamingExportNotEnabled` is reported as such), and
/// the configured tables exist in `json_schemas`.
pub async fn source_findings(cfg: &ConvexSourceConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let client = match Client::new(&cfg.url, cfg.deploy_key.clone()) {
        Ok(c) => c,
        Err(e) => {
            out.push(Finding::fail("source reachable", e.to_string()));
            return out;
        }
    };
    let tables = match client.tables(&cfg.component).await {
        Ok(t) => {
            out.push(Finding::pass(
                "streaming export",
                format!("{} answers json_schemas with this deploy key", cfg.url),
            ));
            t
        }
        Err(e) => {
            out.push(Finding::fail("streaming export", e.message));
            return out;
        }
    };
    for t in &cfg.tables {
        let subject = format!("table {t}");
        if tables.contains(t) {
            out.push(Finding::pass(subject, "listed by json_schemas"));
        } else {
            out.push(Finding::fail(
                subject,
                "not in json_schemas (no such table yet)",
            ));
        }
    }
    if cfg.tables.is_empty() {
        out.push(Finding::pass(
            "tables",
            format!("all {} user tables of the component", tables.len()),
        ));
    }
    match client
        .list_snapshot(
            &cfg.component,
            tables.first().map(String::as_str),
            None,
            None,
        )
        .await
    {
        Ok(_) => out.push(Finding::pass(
            "list_snapshot",
            "a snapshot page can be read",
        )),
        Err(e) => out.push(Finding::fail("list_snapshot", e.message)),
    }
    out
}

/// For each mapping of a table of this source, the fields `json_schemas`
/// lists that the mapping names nowhere (no column's path starts with
/// them, not dropped, no `rest` column, `unmapped = "reject"`): before
/// any data arrives, what can only go to a target column of the same name
/// (checked against the target by the mapping check) or be rejected.
pub async fn mapping_findings(
    cfg: &ConvexSourceConfig,
    mappings: &ferry_pipeline::mapping::Mappings,
) -> Vec<Finding> {
    let client = match Client::new(&cfg.url, cfg.deploy_key.clone()) {
        Ok(c) => c,
        Err(e) => return vec![Finding::fail("mapping vs json_schemas", e.to_string())],
    };
    let schemas = match client.json_schemas().await {
        Ok(s) => s,
        Err(e) => return vec![Finding::fail("mapping vs json_schemas", e.message)],
    };
    let tables = schemas
        .get(&cfg.component)
        .filter(|m| m.is_object() && m.get("type").is_none())
        .unwrap_or(&schemas);
    let mut out = Vec::new();
    for m in &mappings.tables {
        let Some(id) = ferry_pipeline::event::TableId::parse(&m.source) else {
            continue;
        };
        if id.schema != cfg.schema_name() {
            continue;
        }
        let subject = format!("mapping of {}", m.source);
        let Some(props) = tables
            .get(&id.name)
            .and_then(|t| t.get("properties"))
            .and_then(|p| p.as_object())
        else {
            out.push(Finding::fail(subject, "json_schemas has no such table"));
            continue;
        };
        let fields: Vec<&str> = props.keys().map(String::as_str).collect();
        let open = unnamed_fields(m, &fields);
        if open.is_empty() {
            out.push(Finding::pass(
                subject,
                format!(
                    "every field json_schemas lists ({}) is mapped, dropped or kept in `rest`",
                    fields.len()
                ),
            ));
        } else {
            out.push(Finding::pass(
                subject,
                format!(
                    "fields the mapping names nowhere: {}; each needs a target column of its name, \
                     or its records are rejected (add a column rule, `drop`, or `rest`)",
                    open.join(", ")
                ),
            ));
        }
    }
    out
}

/// The fields of `fields` no rule of `m` covers (see [`mapping_findings`]).
pub fn unnamed_fields<'a>(
    m: &ferry_pipeline::mapping::TableMapping,
    fields: &[&'a str],
) -> Vec<&'a str> {
    use ferry_pipeline::mapping::{ColumnSpec, Unmapped};
    if m.rest.is_some() || m.unmapped == Unmapped::Drop {
        return Vec::new();
    }
    let first = |p: &str| p.split('.').next().unwrap_or("").to_string();
    let mut named: std::collections::HashSet<String> = m.drop.iter().map(|d| first(d)).collect();
    for spec in m.columns.values() {
        match spec {
            ColumnSpec::Path(p) => {
                named.insert(first(p));
            }
            // A rule without `from` is a constant: it takes no field.
            ColumnSpec::Rule(r) => {
                if let Some(f) = r.from.as_deref() {
                    named.insert(first(f));
                }
            }
        }
    }
    fields
        .iter()
        .copied()
        .filter(|f| !named.contains(*f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_no_rule_covers_are_listed() {
        let m = ferry_pipeline::mapping::Mappings::from_toml(
            r#"
[[tables]]
source = "convex.users"
target = "public.users"
drop = ["secret.key"]
[tables.columns]
id = { from = "_id" }
city = "address.city"
name = { default = "x" }
"#,
        )
        .unwrap();
        let fields = ["_id", "_creationTime", "address", "name", "secret", "age"];
        assert_eq!(
            unnamed_fields(&m.tables[0], &fields),
            vec!["_creationTime", "name", "age"]
        );
        let mut with_rest = m.tables[0].clone();
        with_rest.rest = Some("extra".into());
        assert!(unnamed_fields(&with_rest, &fields).is_empty());
    }
}
