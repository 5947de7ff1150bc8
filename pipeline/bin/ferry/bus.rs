//! `ferry kafka reset`: starts a pipeline's Kafka bus over after the broker
//! lost its data (docs/kafka.md, "A broker that lost its data"). The work
//! is in the sink (`PostgresSink::reset_bus`) and the Kafka bus
//! (`bus::kafka::reset`); this file parses arguments and prints.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ferry_pipeline::bus::kafka::reset;
use ferry_pipeline::config::SinkConfig;
use ferry_postgres_sink::PostgresSink;

use crate::exit;

#[derive(Args)]
pub(crate) struct KafkaArgs {
    #[command(subcommand)]
    command: KafkaCommand,
}

#[derive(Subcommand)]
enum KafkaCommand {
    /// Start the pipeline over on a broker that lost its data: forget the
    /// workers' progress in the target and the source's checkpoint in
    /// Kafka. Then start the source (it copies every table again, emptying
    /// each target table first) and the workers (they read the topics from
    /// their beginning). Stop the pipeline's processes first. Safe to run
    /// again.
    Reset {
        #[arg(long, short)]
        config: PathBuf,
        /// Required: the next start copies every table again.
        #[arg(long)]
        yes: bool,
        /// Even if a worker wrote progress in the last 30 s.
        #[arg(long)]
        force: bool,
    },
}

pub(crate) async fn run(args: KafkaArgs) -> u8 {
    let KafkaCommand::Reset { config, yes, force } = args.command;
    let config = match crate::load(&config).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(k) = &config.kafka else {
        eprintln!("ferry kafka reset: the configuration has no [kafka] section");
        return exit::CONFIG;
    };
    if !yes {
        eprintln!("ferry kafka reset: forgets the progress of pipeline {} (topic prefix {}) in the target and in Kafka, and its next start copies every table again; add --yes", config.pipeline.name, k.topic_prefix);
        return exit::CONFIG;
    }
    let SinkConfig::Postgres(dst) = &config.sink else {
        eprintln!("ferry kafka reset: implemented for a PostgreSQL target only");
        return exit::CONFIG;
    };
    let mut sink = PostgresSink::new(dst.clone(), config.pipeline.name.clone());
    // The target first: it refuses while workers run.
    let cleared = match sink.reset_bus(force).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry kafka reset: {e}");
            return exit::PIPELINE;
        }
    };
    println!(
        "target: forgot {} partition offsets, {} barriers, {} recorded snapshots",
        cleared.offsets, cleared.barriers, cleared.snapshots
    );
    match reset::forget_source_checkpoint(k, &config.pipeline.name).await {
        Ok(topic) => {
            println!("source: wrote an empty checkpoint to {topic}");
            println!("start the source, then the workers: every table is copied again, each copy emptying its target table first");
            exit::OK
        }
        Err(e) => {
            eprintln!("ferry kafka reset: {e}; run it again before starting the pipeline");
            exit::PIPELINE
        }
    }
}
