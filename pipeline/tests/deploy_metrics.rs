//! The Grafana dashboard and the Prometheus alert rules in deploy/ use only
//! metric names the code exports (`ferry_pipeline::metrics::ALL`), so that
//! renaming a metric breaks this test instead of a dashboard nobody opens
//! until the night it is needed. The rules' syntax and behaviour are
//! checked with promtool by tests/status.rs.

use std::collections::BTreeSet;

use ferry_pipeline::metrics::{self, ALL};

/// Labels that Prometheus's scrape config adds (deploy/prometheus/prometheus.yml).
const SCRAPE_LABELS: &[&str] = &["ferry_pipeline", "ferry_role"];

/// Every `ferry_…` identifier in `text`.
fn ferry_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("ferry_") {
        let start = i + at;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The exported metric a name in a query refers to (histograms and
/// summaries are queried through their `_bucket`, `_sum`, `_count` series).
fn exported(name: &str) -> bool {
    ALL.contains(&name)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|base| ALL.contains(&base)))
}

fn check(file: &str, text: &str) -> BTreeSet<String> {
    let names: BTreeSet<String> = ferry_names(text)
        .into_iter()
        .filter(|n| !SCRAPE_LABELS.contains(&n.as_str()))
        .collect();
    let unknown: Vec<_> = names.iter().filter(|n| !exported(n)).collect();
    assert!(
        unknown.is_empty(),
        "{file} uses metrics the code does not export: {unknown:?} (pipeline/src/metrics.rs)"
    );
    names
}

fn read(rel: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let text = read("deploy/grafana/dashboards/ferry.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    // Only the queries count (titles and descriptions may name anything).
    let mut exprs = String::new();
    fn collect(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push_str(s);
                            out.push('\n');
                        }
                        _ => collect(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(&dashboard, &mut exprs);
    let names = check("deploy/grafana/dashboards/ferry.json", &exprs);
    // What an operator watches is on it.
    for needed in [
        metrics::TABLE_LAG_SECONDS,
        metrics::TABLE_APPLY_LAG_SECONDS,
        metrics::EVENTS_TOTAL,
        metrics::DLQ_TABLE_RECORDS,
        metrics::SINK_BATCH_DURATION_SECONDS,
        metrics::SNAPSHOT_ROWS_TOTAL,
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(needed)),
            "the dashboard has no panel for {needed}"
        );
    }
    // The lag panel is repeated per table.
    assert!(
        text.contains("\"repeat\": \"table\""),
        "no per-table lag panel"
    );
}

#[test]
fn the_alert_rules_use_only_exported_metrics() {
    let text = read("deploy/prometheus/alerts.yml");
    let names = check("deploy/prometheus/alerts.yml", &text);
    for needed in [
        metrics::TABLE_LAG_SECONDS,
        metrics::DLQ_TABLE_RECORDS,
        metrics::REPLICATION_LAG_BYTES,
        metrics::SNAPSHOT_DONE,
    ] {
        assert!(names.contains(needed), "no alert on {needed}");
    }
    let tests = read("deploy/prometheus/alerts_test.yml");
    check("deploy/prometheus/alerts_test.yml", &tests);
}

#[test]
fn a_renamed_metric_is_caught() {
    assert!(exported("ferry_table_apply_lag_seconds_bucket"));
    assert!(!exported("ferry_table_lag_second"));
    assert_eq!(
        ferry_names("rate(ferry_events_total[1m]) / xferry_y"),
        BTreeSet::from(["ferry_events_total".to_string()])
    );
}
