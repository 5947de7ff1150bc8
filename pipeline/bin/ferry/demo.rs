//! `ferry demo`: the one-command quickstart. Starts two throwaway local
//! PostgreSQL clusters, seeds the payments workload, replicates it while
//! traffic flows, prints lag every second, then compares both sides row by
//! row.

use std::time::{Duration, Instant};

use ferry_pipeline::config::{
    Config, MetricsConfig, PipelineConfig, PostgresSinkConfig, PostgresSourceConfig, Secret,
    SinkConfig, SnapshotMode, SourceConfig,
};
use ferry_pipeline::event::TableId;
use ferry_pipeline::metrics::metrics;
use ferry_testkit::cluster::{ClusterOptions, LocalCluster};
use ferry_testkit::workload;
use tokio::sync::watch;

use crate::exit;

#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    /// How long to generate traffic.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Payments per second (3 row changes each).
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Accounts seeded before replication starts (copied by the snapshot).
    #[arg(long, default_value_t = 20_000)]
    accounts: i64,
}

pub(crate) async fn run(args: DemoArgs) -> u8 {
    if let Err(why) = LocalCluster::binaries_available() {
        eprintln!("ferry demo needs PostgreSQL's server binaries: {why}");
        return exit::PIPELINE;
    }
    match demo(args).await {
        Ok(true) => exit::OK,
        Ok(false) => exit::MISMATCH,
        Err(e) => {
            eprintln!("ferry demo failed: {e:#}");
            exit::PIPELINE
        }
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<bool> {
    println!("starting two local PostgreSQL clusters (source and target)…");
    let source = LocalCluster::start(ClusterOptions::default()).await?;
    let target = LocalCluster::start(ClusterOptions::default()).await?;
    source.create_database("app").await?;
    target.create_database("app").await?;
    println!("  source: {}", source.url("app"));
    println!("  target: {}", target.url("app"));
    let src = source.connect("app").await?;
    workload::seed(&src, args.accounts).await?;
    println!(
        "seeded {} accounts; starting ferry (snapshot, then streaming)",
        args.accounts
    );

    let config = Config {
        pipeline: PipelineConfig {
            name: "demo".into(),
            ..PipelineConfig::default()
        },
        source: SourceConfig::Postgres(PostgresSourceConfig {
            url: Secret::new(source.url("app")),
            tables: workload::TABLES.iter().map(|s| s.to_string()).collect(),
            publication: "ferry".into(),
            slot: "ferry".into(),
            create_publication: true,
            snapshot: SnapshotMode::Initial,
            snapshot_chunk_pages: 2048,
            snapshot_parallelism: 2,
            heartbeat_secs: 10,
            status_interval_ms: 1000,
            sslmode: None,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            skip_origins: vec!["ferry_*".into()],
        }),
        sink: SinkConfig::Postgres(PostgresSinkConfig {
            url: Secret::new(target.url("app")),
            create_tables: true,
            schema: None,
            sslmode: None,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            id_map_url: None,
        }),
        metrics: MetricsConfig::default(),
        kafka: None,
        cutover: Default::default(),
        mappings: None,
    };
    config.validate()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let pipeline = {
        let config = config.clone();
        tokio::spawn(
            async move { crate::run_pipeline(&config, crate::Role::All, stop_rx, None).await },
        )
    };

    // Traffic at a steady rate.
    let (traffic_stop_tx, traffic_stop) = watch::channel(false);
    let accounts = args.accounts;
    let rate = args.rate.max(1);
    let mut writer = source.connect("app").await?;
    let traffic = tokio::spawn(async move {
        let mut changes = 0u64;
        let mut id = 1i64;
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*traffic_stop.borrow() {
            tick.tick().await;
            changes += workload::payment(&mut writer, id, accounts).await?;
            id += 1;
        }
        anyhow::Ok(changes)
    });

    let started = Instant::now();
    let mut last_applied = 0u64;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if pipeline.is_finished() {
            break;
        }
        let applied = applied_events();
        println!(
            "  t={:>3}s  applied {:>8} changes (+{:>6}/s)  lag {:.3}s",
            started.elapsed().as_secs(),
            applied,
            applied - last_applied,
            metrics().lag_seconds.with_label_values(&["demo"]).get()
        );
        last_applied = applied;
    }
    traffic_stop_tx.send(true)?;
    let generated = traffic.await??;
    println!("traffic stopped after {generated} row changes; waiting for ferry to catch up…");

    let pairs: Vec<(TableId, TableId)> = workload::TABLES
        .iter()
        .filter_map(|t| TableId::parse(t))
        .map(|t| (t.clone(), t))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut equal = false;
    while Instant::now() < deadline && !pipeline.is_finished() {
        if quiet_compare(&source.url("app"), &target.url("app"), &pairs).await? {
            equal = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if pipeline.is_finished() {
        let _ = traffic_stop_tx.send(true);
        match pipeline.await {
            Ok(Err(e)) => anyhow::bail!("pipeline stopped: {e}"),
            Err(e) => anyhow::bail!("pipeline task: {e}"),
            Ok(Ok(())) => anyhow::bail!("pipeline stopped early"),
        }
    }
    println!("row-by-row comparison of source and target:");
    let parse =
        |url: String| ferry_pgconn::PgConnInfo::parse(&url).map_err(|e| anyhow::anyhow!("{e}"));
    let printed_equal = crate::compare_all(
        &parse(source.url("app"))?,
        &parse(target.url("app"))?,
        &pairs,
    )
    .await?;
    let _ = stop_tx.send(true);
    match pipeline.await {
        Ok(Err(e)) => anyhow::bail!("pipeline stopped: {e}"),
        Err(e) => anyhow::bail!("pipeline task: {e}"),
        Ok(Ok(())) => {}
    }
    if equal && printed_equal {
        println!("the target is an exact mirror of the source.");
    }
    Ok(equal && printed_equal)
}

fn applied_events() -> u64 {
    metrics().events_at("sink")
}

async fn quiet_compare(
    source: &str,
    target: &str,
    pairs: &[(TableId, TableId)],
) -> anyhow::Result<bool> {
    let s = ferry_postgres_source::connect(source).await?;
    let t = ferry_postgres_source::connect(target).await?;
    for (a, b) in pairs {
        let p = crate::parity::compare(&s, &t, a, b).await;
        match p {
            Ok(p) if p.is_equal() => {}
            // The target table may not exist yet while the snapshot runs.
            _ => return Ok(false),
        }
    }
    Ok(true)
}
