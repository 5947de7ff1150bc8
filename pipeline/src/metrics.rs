//! Every metric Ferry exports, registered once, and the `/metrics` endpoint
//! ([`endpoint`]).
//!
//! Names follow `ferry_<what>_<unit>[_total]`; labels stay low-cardinality
//! (table, op, stage, error_class). docs/METRICS.md documents each one.

use std::sync::OnceLock;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
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

pub mod endpoint;

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
    /// Label: stage.
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
    /// `ferry verify --watch`: differing rows of the last run. Label: table
    /// (the target table).
    pub verify_drift: IntGaugeVec,
    /// `ferry verify --watch`: Unix time of the last green run. Label:
    /// table.
    pub verify_last_success: IntGaugeVec,
    /// `ferry verify --watch`: source rows compared. Label: table.
    pub verify_rows_checked: IntCounterVec,
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
            Opts::new(RETRIES_TOTAL, "Transient failures retried, by stage"),
            &["stage"],
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
            Box::new(kafka_assigned.clone()),
            Box::new(kafka_waiting.clone()),
            Box::new(kafka_members.clone()),
            Box::new(kafka_held.clone()),
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
            verify_drift,
            verify_last_success,
            verify_rows_checked,
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
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}
