//! Target tables lost behind the pipeline's back (dropped by hand while the
//! target still holds the pipeline's checkpoint), refused at start, and
//! `ferry run --recopy TABLE`, the explicit way to copy one again (also
//! after emptying a table by hand, which Ferry cannot tell from a TRUNCATE
//! it replicated).

use ferry_pipeline::config::{BusKind, Config, SinkConfig};
use ferry_pipeline::event::TableId;
use ferry_postgres_sink::check;

use crate::exit;

/// Forgets the snapshots of `recopy` (emptying their target tables), then
/// refuses to start when a mirrored table the checkpoint says was copied is
/// gone or empty while its source has rows. `Err` is the exit code.
pub(crate) async fn guard(config: &Config, recopy: &[String]) -> Result<(), u8> {
    // Snapshot records and lost tables: the PostgreSQL sink's bookkeeping.
    let SinkConfig::Postgres(sink) = &config.sink else {
        if !recopy.is_empty() {
            eprintln!("ferry run --recopy: implemented for a PostgreSQL target only");
            return Err(exit::CONFIG);
        }
        return Ok(());
    };
    let pipeline = &config.pipeline.name;
    let configured = config.source.tables();
    let mut forget = Vec::new();
    for name in recopy {
        let Some(id) = TableId::parse(name).filter(|id| configured.contains(id)) else {
            eprintln!("ferry run --recopy {name}: not one of source.tables");
            return Err(exit::CONFIG);
        };
        forget.push(id);
    }
    if !forget.is_empty() && config.pipeline.bus == BusKind::Kafka {
        // The Kafka bus keeps snapshot records in its checkpoint topic,
        // which this command does not rewrite.
        eprintln!("ferry run --recopy: not available on the Kafka bus yet");
        return Err(exit::CONFIG);
    }
    for id in &forget {
        if let Err(e) = check::forget_snapshot(sink, pipeline, id).await {
            eprintln!("ferry run --recopy {id}: {e}");
            return Err(exit::PIPELINE);
        }
        tracing::info!(table = %id, "copying the table again (--recopy)");
    }
    // Mapped tables land in other tables than their source's name; this
    // check covers mirrored ones.
    if config.mappings.is_some() || configured.is_empty() {
        return Ok(());
    }
    let lost = match check::lost_tables(sink, pipeline, &configured).await {
        Ok(l) => l,
        // A target that is down at start is waited for by the pipeline
        // (it retries); the check needs it up, so it is skipped then.
        Err(e) if e.disposition() == ferry_pipeline::error::Disposition::Retry => {
            tracing::warn!(error = %e, "target unreachable at start: lost-table check skipped");
            return Ok(());
        }
        Err(e) => {
            eprintln!("ferry: cannot read the target's tables: {e}");
            return Err(exit::PIPELINE);
        }
    };
    if lost.is_empty() {
        return Ok(());
    }
    for t in &lost {
        eprintln!(
            "ferry: target table {} does not exist, but this pipeline's checkpoint says its \
             snapshot copied {} rows: it was dropped by hand. Streaming on would re-create it \
             short of every row copied before.",
            t.target, t.copied_rows
        );
    }
    let names: Vec<String> = lost
        .iter()
        .map(|t| format!("--recopy {}", t.source))
        .collect();
    eprintln!(
        "ferry: to copy again (the stream goes on for the other tables): ferry run --config … {}",
        names.join(" ")
    );
    Err(exit::PIPELINE)
}
