//! Every metric Ferry exports, registered once, and the `/metrics` endpoint
//! ([`endpoint`]).
//!
//! Names follow `ferry_<what>_<unit>[_total]`; labels stay low-cardinality
//! (table, op, stage, error_class). docs/METRICS.md documents each one.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

pub const EVENTS_TOTAL: &str = "ferry_events_total";
pub const REPLICATION_LAG_SECONDS: &str = "ferry_replication_lag_seconds";
pub const REPLICATION_LAG_BYTES: &str = "ferry_replication_lag_bytes";
pub const SINK_BATCH_DURATION_SECONDS: &str = "ferry_sink_batch_duration_seconds";
pub const SINK_BATCH_EVENTS: &str = "ferry_sink_batch_events";
pub const SNAPSHOT_ROWS_TOTAL: &str = "ferry_snapshot_rows_total";
pub const SNAPSHOT_ROWS_ESTIMATE: &str = "ferry_snapshot_rows_estimate";
pub const RETRIES_TOTAL: &str = "ferry_retries_total";
pub const ERRORS_TOTAL: &str = "ferry_errors_total";
pub const BUS_DEPTH_MESSAGES: &str = "ferry_bus_depth_messages";
pub const CONFIRMED_LSN: &str = "ferry_source_confirmed_lsn";
pub const DLQ_EVENTS_TOTAL: &str = "ferry_dlq_events_total";
pub const DLQ_DEPTH_RECORDS: &str = "ferry_dlq_depth_records";
pub const KAFKA_ASSIGNED_PARTITIONS: &str = "ferry_kafka_assigned_partitions";
pub const KAFKA_WAITING_FOR_ASSIGNMENT: &str = "ferry_kafka_waiting_for_assignment";
pub const KAFKA_GROUP_MEMBERS: &str = "ferry_kafka_group_members";
pub const KAFKA_HELD_PARTITIONS: &str = "ferry_kafka_held_partitions";
pub const VERIFY_DRIFT_ROWS: &str = "ferry_verify_drift_rows";
pub const VERIFY_LAST_SUCCESS_TIMESTAMP: &str = "ferry_verify_last_success_timestamp";
pub const VERIFY_ROWS_CHECKED_TOTAL: &str = "ferry_verify_rows_checked_total";

pub const TABLE_LAG_SECONDS: &str = "ferry_table_lag_seconds";
pub const TABLE_APPLY_LAG_SECONDS: &str = "ferry_table_apply_lag_seconds";
pub const SNAPSHOT_DONE: &str = "ferry_snapshot_done";
pub const DLQ_TABLE_RECORDS: &str = "ferry_dlq_table_records";
pub const ID_MAP_ALLOCATIONS_TOTAL: &str = "ferry_id_map_allocations_total";
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "ferry_process_resident_memory_bytes";
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "ferry_process_cpu_seconds_total";
pub const RESUME_TOKEN_TIMESTAMP: &str = "ferry_source_resume_token_timestamp_seconds";
pub const KAFKA_CONSUMER_LAG: &str = "ferry_kafka_consumer_lag_messages";

/// Every metric name this process exports (the dashboard and alert rules
/// in deploy/ are checked against it by pipeline/tests/deploy_metrics.rs).
pub const ALL: &[&str] = &[
    EVENTS_TOTAL,
    REPLICATION_LAG_SECONDS,
    REPLICATION_LAG_BYTES,
    SINK_BATCH_DURATION_SECONDS,
    SINK_BATCH_EVENTS,
    SNAPSHOT_ROWS_TOTAL,
    SNAPSHOT_ROWS_ESTIMATE,
    RETRIES_TOTAL,
    ERRORS_TOTAL,
    BUS_DEPTH_MESSAGES,
    CONFIRMED_LSN,
    DLQ_EVENTS_TOTAL,
    DLQ_DEPTH_RECORDS,
    KAFKA_ASSIGNED_PARTITIONS,
    KAFKA_WAITING_FOR_ASSIGNMENT,
    KAFKA_GROUP_MEMBERS,
    KAFKA_HELD_PARTITIONS,
    TABLE_LAG_SECONDS,
    TABLE_APPLY_LAG_SECONDS,
    SNAPSHOT_DONE,
    DLQ_TABLE_RECORDS,
    ID_MAP_ALLOCATIONS_TOTAL,
    PROCESS_RESIDENT_MEMORY_BYTES,
    PROCESS_CPU_SECONDS_TOTAL,
    VERIFY_DRIFT_ROWS,
    VERIFY_LAST_SUCCESS_TIMESTAMP,
    VERIFY_ROWS_CHECKED_TOTAL,
    RESUME_TOKEN_TIMESTAMP,
    KAFKA_CONSUMER_LAG,
];

pub mod endpoint;
pub mod status;

/// Handles to every metric.
pub struct Metrics {
    pub registry: Registry,
    /// Labels: stage (source|sink), table, op.
    pub events: IntCounterVec,
    /// Seconds between the source commit and the sink commit of the last
    /// applied transaction. Label: table is not used (one per pipeline).
    pub lag_seconds: GaugeVec,
    /// Bytes of WAL between the source's current end and the confirmed
    /// position.
    pub lag_bytes: IntGauge,
    pub batch_duration: HistogramVec,
    pub batch_events: HistogramVec,
    /// Label: table.
    pub snapshot_rows: IntCounterVec,
    /// Label: table.
    pub snapshot_estimate: IntGaugeVec,
    /// Labels: stage, reason ([`crate::error::retry_reason`]).
    pub retries: IntCounterVec,
    /// Labels: stage, error_class.
    pub errors: IntCounterVec,
    pub bus_depth: IntGauge,
    pub confirmed_lsn: IntGauge,
    pub dlq_events: IntCounterVec,
    pub dlq_depth: IntGauge,
    /// Kafka worker: partitions assigned to this worker.
    pub kafka_assigned: IntGauge,
    /// Kafka worker: 1 while it has had no partition for 5 s or more.
    pub kafka_waiting: IntGauge,
    /// Kafka worker: members of its consumer group, as last described
    /// (only looked up while waiting for an assignment).
    pub kafka_members: IntGauge,
    /// Kafka worker: partitions held at a cross-partition barrier.
    pub kafka_held: IntGauge,
    /// Kafka worker: messages between a partition's high watermark and the
    /// offset committed after the sink's last commit. Labels: topic,
    /// partition (bounded by the topics' partitions, never keys).
    pub kafka_consumer_lag: IntGaugeVec,
    /// Token-resumed sources (MongoDB, Convex): Unix time at the source of
    /// what the stored resume token points at. `time() - this` is how old
    /// the point a restart resumes from is (against the oplog window or
    /// the deployment's change-log retention).
    pub resume_token_time: Gauge,
    /// `ferry verify --watch`: differing rows of the last run. Label: table
    /// (the target table).
    pub verify_drift: IntGaugeVec,
    /// `ferry verify --watch`: Unix time of the last green run. Label:
    /// table.
    pub verify_last_success: IntGaugeVec,
    /// `ferry verify --watch`: source rows compared. Label: table.
    pub verify_rows_checked: IntCounterVec,
    /// Label: table. Set from [`status::Status`] when scraped: rises while
    /// a table's changes wait.
    pub table_lag: GaugeVec,
    /// Label: table. Source commit → target commit of the last change of
    /// each table in each committed batch.
    pub apply_lag: HistogramVec,
    /// Label: table. 1 once its snapshot is committed (or was, by an
    /// earlier run), 0 while it is copied.
    pub snapshot_done: IntGaugeVec,
    /// Labels: table, rule. Records waiting in the dead-letter queue.
    pub dlq_table: IntGaugeVec,
    /// Label: namespace. New ids the id map allocated.
    pub id_map_allocations: IntCounterVec,
    pub process_rss: IntGauge,
    pub process_cpu: prometheus::Counter,
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let events = IntCounterVec::new(
            Opts::new(EVENTS_TOTAL, "Change events seen, by stage, table and op"),
            &["stage", "table", "op"],
        )
        .expect("valid metric");
        let lag_seconds = GaugeVec::new(
            Opts::new(
                REPLICATION_LAG_SECONDS,
                "Seconds from source commit to sink commit of the last applied change",
            ),
            &["pipeline"],
        )
        .expect("valid metric");
        let lag_bytes = IntGauge::new(
            REPLICATION_LAG_BYTES,
            "WAL bytes between the source's end and the confirmed position",
        )
        .expect("valid metric");
        let batch_duration = HistogramVec::new(
            HistogramOpts::new(SINK_BATCH_DURATION_SECONDS, "Sink batch commit latency").buckets(
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
            &["sink"],
        )
        .expect("valid metric");
        let batch_events = HistogramVec::new(
            HistogramOpts::new(
                SINK_BATCH_EVENTS,
                "Source events folded into one sink batch",
            )
            .buckets(prometheus::exponential_buckets(1.0, 4.0, 9).expect("valid buckets")),
            &["sink"],
        )
        .expect("valid metric");
        let snapshot_rows = IntCounterVec::new(
            Opts::new(SNAPSHOT_ROWS_TOTAL, "Rows copied by the initial snapshot"),
            &["table"],
        )
        .expect("valid metric");
        let snapshot_estimate = IntGaugeVec::new(
            Opts::new(
                SNAPSHOT_ROWS_ESTIMATE,
                "Estimated rows of a table being snapshotted",
            ),
            &["table"],
        )
        .expect("valid metric");
        let retries = IntCounterVec::new(
            Opts::new(
                RETRIES_TOTAL,
                "Transient failures retried, by stage and reason (connection, serialization, deadlock, resources, lock, shutdown, server_error, rate_limited, other)",
            ),
            &["stage", "reason"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(ERRORS_TOTAL, "Errors by stage and class"),
            &["stage", "error_class"],
        )
        .expect("valid metric");
        let bus_depth =
            IntGauge::new(BUS_DEPTH_MESSAGES, "Messages waiting in the bus").expect("valid metric");
        let confirmed_lsn = IntGauge::new(
            CONFIRMED_LSN,
            "Source position confirmed upstream (PostgreSQL LSN as an integer)",
        )
        .expect("valid metric");
        let dlq_events = IntCounterVec::new(
            Opts::new(
                DLQ_EVENTS_TOTAL,
                "Records parked in the dead-letter queue, by table and error class",
            ),
            &["table", "error_class"],
        )
        .expect("valid metric");
        let dlq_depth = IntGauge::new(
            DLQ_DEPTH_RECORDS,
            "Records in the dead-letter queue (as last counted by this process)",
        )
        .expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let kafka_assigned = gauge(
            KAFKA_ASSIGNED_PARTITIONS,
            "Kafka partitions assigned to this worker",
        );
        let kafka_waiting = gauge(
            KAFKA_WAITING_FOR_ASSIGNMENT,
            "1 while this Kafka worker has had no partition assigned for 5 s or more",
        );
        let kafka_members = gauge(
            KAFKA_GROUP_MEMBERS,
            "Members of this worker's consumer group (looked up while it waits for an assignment)",
        );
        let kafka_held = gauge(
            KAFKA_HELD_PARTITIONS,
            "Kafka partitions held at a cross-partition barrier (TRUNCATE, snapshot start, key change)",
        );
        let kafka_consumer_lag = IntGaugeVec::new(
            Opts::new(
                KAFKA_CONSUMER_LAG,
                "Kafka worker: messages of an assigned partition not yet committed by the sink (high watermark - committed offset)",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let resume_token_time = Gauge::new(
            RESUME_TOKEN_TIMESTAMP,
            "Unix time at the source of the change the stored resume token points at (MongoDB, Convex); time() minus it is the resume point's age",
        )
        .expect("valid metric");
        let table_lag = GaugeVec::new(
            Opts::new(
                TABLE_LAG_SECONDS,
                "Seconds since the source commit of the oldest change of this table not yet committed to the target (0 when none waits)",
            ),
            &["table"],
        )
        .expect("valid metric");
        let apply_lag = HistogramVec::new(
            HistogramOpts::new(
                TABLE_APPLY_LAG_SECONDS,
                "Source commit to target commit of each table's changes, per committed batch",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
            ]),
            &["table"],
        )
        .expect("valid metric");
        let snapshot_done = IntGaugeVec::new(
            Opts::new(
                SNAPSHOT_DONE,
                "1 once the table's snapshot is committed, 0 while it is copied",
            ),
            &["table"],
        )
        .expect("valid metric");
        let dlq_table = IntGaugeVec::new(
            Opts::new(
                DLQ_TABLE_RECORDS,
                "Records waiting in the dead-letter queue, by table and rule (error code)",
            ),
            &["table", "rule"],
        )
        .expect("valid metric");
        let id_map_allocations = IntCounterVec::new(
            Opts::new(
                ID_MAP_ALLOCATIONS_TOTAL,
                "New ids allocated by the id map, by namespace",
            ),
            &["namespace"],
        )
        .expect("valid metric");
        let process_rss = gauge(
            PROCESS_RESIDENT_MEMORY_BYTES,
            "Resident memory of the ferry process",
        );
        let process_cpu = prometheus::Counter::new(
            PROCESS_CPU_SECONDS_TOTAL,
            "CPU time (user and system) of the ferry process",
        )
        .expect("valid metric");
        let verify_drift = IntGaugeVec::new(
            Opts::new(
                VERIFY_DRIFT_ROWS,
                "Rows the last ferry verify found different (after re-checks), by table",
            ),
            &["table"],
        )
        .expect("valid metric");
        let verify_last_success = IntGaugeVec::new(
            Opts::new(
                VERIFY_LAST_SUCCESS_TIMESTAMP,
                "Unix time of the last ferry verify that found the table equal",
            ),
            &["table"],
        )
        .expect("valid metric");
        let verify_rows_checked = IntCounterVec::new(
            Opts::new(
                VERIFY_ROWS_CHECKED_TOTAL,
                "Source rows compared by ferry verify, by table",
            ),
            &["table"],
        )
        .expect("valid metric");
        for c in [
            Box::new(events.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(verify_drift.clone()),
            Box::new(verify_last_success.clone()),
            Box::new(verify_rows_checked.clone()),
            Box::new(table_lag.clone()),
            Box::new(apply_lag.clone()),
            Box::new(snapshot_done.clone()),
            Box::new(dlq_table.clone()),
            Box::new(id_map_allocations.clone()),
            Box::new(process_rss.clone()),
            Box::new(process_cpu.clone()),
            Box::new(kafka_assigned.clone()),
            Box::new(kafka_waiting.clone()),
            Box::new(kafka_members.clone()),
            Box::new(kafka_held.clone()),
            Box::new(kafka_consumer_lag.clone()),
            Box::new(resume_token_time.clone()),
            Box::new(dlq_events.clone()),
            Box::new(dlq_depth.clone()),
            Box::new(lag_seconds.clone()),
            Box::new(lag_bytes.clone()),
            Box::new(batch_duration.clone()),
            Box::new(batch_events.clone()),
            Box::new(snapshot_rows.clone()),
            Box::new(snapshot_estimate.clone()),
            Box::new(retries.clone()),
            Box::new(errors.clone()),
            Box::new(bus_depth.clone()),
            Box::new(confirmed_lsn.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            events,
            lag_seconds,
            lag_bytes,
            batch_duration,
            batch_events,
            snapshot_rows,
            snapshot_estimate,
            retries,
            errors,
            bus_depth,
            confirmed_lsn,
            dlq_events,
            dlq_depth,
            kafka_assigned,
            kafka_waiting,
            kafka_members,
            kafka_held,
            kafka_consumer_lag,
            resume_token_time,
            verify_drift,
            verify_last_success,
            verify_rows_checked,
            table_lag,
            apply_lag,
            snapshot_done,
            dlq_table,
            id_map_allocations,
            process_rss,
            process_cpu,
        }
    }

    /// Changes applied to `table` by the sink (all ops).
    pub fn applied(&self, table: &str) -> u64 {
        sum_where(&self.events, &[("stage", "sink"), ("table", table)]) as u64
    }

    /// Rows the snapshot copied of `table` in this process.
    pub fn snapshot_rows_of(&self, table: &str) -> u64 {
        sum_where(&self.snapshot_rows, &[("table", table)]) as u64
    }

    /// The snapshot's row estimate of `table` (0 when unknown).
    pub fn snapshot_estimate_of(&self, table: &str) -> u64 {
        sum_where(&self.snapshot_estimate, &[("table", table)]).max(0.0) as u64
    }

    /// Records waiting in the dead-letter queue per table (all rules).
    pub fn dlq_by_table(&self) -> std::collections::HashMap<String, u64> {
        use prometheus::core::Collector;
        let mut out = std::collections::HashMap::new();
        for mf in self.dlq_table.collect() {
            for m in mf.get_metric() {
                if let Some(t) = m.get_label().iter().find(|l| l.name() == "table") {
                    *out.entry(t.value().to_string()).or_default() +=
                        m.get_gauge().get_value().max(0.0) as u64;
                }
            }
        }
        out
    }

    /// Replaces the dead-letter depth by table and rule (and the total)
    /// with a fresh count.
    pub fn set_dlq_depth(&self, by_table_rule: &[(String, String, i64)]) {
        self.dlq_table.reset();
        let mut total = 0;
        for (table, rule, n) in by_table_rule {
            self.dlq_table.with_label_values(&[table, rule]).set(*n);
            total += n;
        }
        self.dlq_depth.set(total);
    }

    /// Brings the gauges computed on demand (per-table lag, process) up to
    /// date; called before every scrape.
    pub fn refresh(&self) {
        for (table, lag) in status::status().lags() {
            self.table_lag.with_label_values(&[&table]).set(lag);
        }
        let (rss, cpu) = process_usage();
        self.process_rss.set(i64::try_from(rss).unwrap_or(i64::MAX));
        let seen = self.process_cpu.get();
        if cpu > seen {
            self.process_cpu.inc_by(cpu - seen);
        }
    }

    /// Sum of `ferry_events_total` over tables and ops for one stage.
    pub fn events_at(&self, stage: &str) -> u64 {
        use prometheus::core::Collector;
        self.events
            .collect()
            .iter()
            .flat_map(|mf| mf.get_metric().iter())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "stage" && l.value() == stage)
            })
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        self.refresh();
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

/// The sum of a metric's series whose labels match `want`, without
/// creating a series (as `with_label_values` would) for a reader's sake.
fn sum_where(c: &dyn prometheus::core::Collector, want: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for mf in c.collect() {
        let counter = mf.get_field_type() == prometheus::proto::MetricType::COUNTER;
        for m in mf.get_metric() {
            let matches = want.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            });
            if matches {
                sum += if counter {
                    m.get_counter().get_value()
                } else {
                    m.get_gauge().get_value()
                };
            }
        }
    }
    sum
}

/// Resident memory (bytes) and CPU time (seconds) of this process, read
/// from /proc/self (0 where it cannot be read: not Linux).
pub fn process_usage() -> (u64, f64) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib * 1024);
    // utime and stime (fields 14 and 15) in clock ticks. USER_HZ is 100 on
    // every Linux architecture Ferry builds for (it is part of the ABI; the
    // kernel's own HZ may differ). Fields are counted after the command
    // name's closing parenthesis, as the name may hold spaces.
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) as f64 / 100.0)
        })
        .unwrap_or(0.0);
    (rss, cpu)
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_table_series_carry_their_labels_and_values() {
        let m = metrics();
        m.set_dlq_depth(&[
            ("public.mt_a".into(), "23505".into(), 2),
            ("public.mt_a".into(), "amount.scale".into(), 1),
            ("public.mt_b".into(), "permanent".into(), 4),
        ]);
        assert_eq!(m.dlq_by_table()["public.mt_a"], 3);
        assert_eq!(m.dlq_by_table()["public.mt_b"], 4);
        for (op, n) in [("insert", 5), ("update", 2)] {
            m.events
                .with_label_values(&["sink", "public.mt_a", op])
                .inc_by(n);
        }
        m.events
            .with_label_values(&["source", "public.mt_a", "insert"])
            .inc_by(100);
        assert_eq!(m.applied("public.mt_a"), 7);
        assert_eq!(m.applied("public.mt_none"), 0);
        m.id_map_allocations.with_label_values(&["users"]).inc_by(3);
        status::status().arrived("public.mt_a", 0, 0);
        let text = m.render();
        for line in [
            "ferry_dlq_table_records{rule=\"23505\",table=\"public.mt_a\"} 2",
            "ferry_dlq_table_records{rule=\"permanent\",table=\"public.mt_b\"} 4",
            "ferry_events_total{op=\"update\",stage=\"sink\",table=\"public.mt_a\"} 2",
            "ferry_id_map_allocations_total{namespace=\"users\"} 3",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // A change committed at the epoch and still waiting: decades behind.
        let lag = text
            .lines()
            .find(|l| l.starts_with("ferry_table_lag_seconds{table=\"public.mt_a\"}"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("per-table lag gauge");
        assert!(lag > 1e9, "{lag}");
        status::status().applied("public.mt_a", 0, crate::clock::now_micros());
        // Reading a value never creates a series.
        assert!(!text.contains("public.mt_none"));
        let (rss, _cpu) = process_usage();
        assert!(rss > 1024 * 1024, "{rss}");
        assert!(text.contains("ferry_process_resident_memory_bytes "));
        // Every exported name is in ALL and in docs/METRICS.md.
        let docs = include_str!("../../docs/METRICS.md");
        for mf in m.registry.gather() {
            assert!(ALL.contains(&mf.name()), "{} not in ALL", mf.name());
        }
        for name in ALL {
            assert!(
                docs.contains(&format!("`{name}`")),
                "{name} not in docs/METRICS.md"
            );
        }
    }
}
