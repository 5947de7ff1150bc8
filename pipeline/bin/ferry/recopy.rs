//! Target tables lost behind the pipeline's back (dropped or emptied by
//! hand while the target still holds the pipeline's checkpoint), refused at
//! start, and `ferry run --recopy TABLE`, the explicit way to copy one again.

use ferry_pipeline::config::{BusKind, Config, SinkConfig, SourceConfig};
use ferry_pipeline::error::Stage;
use ferry_pipeline::event::TableId;
use ferry_postgres_sink::check::{self, Lost};

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
    let mut refused = Vec::new();
    for t in lost {
        if t.how == Lost::Emptied && !source_has_rows(config, &t.source).await {
            // The source is empty too: the table was emptied by the
            // stream itself.
            continue;
        }
        refused.push(t);
    }
    if refused.is_empty() {
        return Ok(());
    }
    for t in &refused {
        let what = match t.how {
            Lost::Dropped => "does not exist",
            Lost::Emptied => "is empty while the source has rows",
        };
        eprintln!(
            "ferry: target table {} {what}, but this pipeline's checkpoint says its snapshot \
             copied {} rows: it was dropped or emptied by hand. Streaming on would leave it \
             short of every row copied before.",
            t.target, t.copied_rows
        );
    }
    let names: Vec<String> = refused
        .iter()
        .map(|t| format!("--recopy {}", t.source))
        .collect();
    eprintln!(
        "ferry: to copy again (the stream goes on for the other tables): ferry run --config … {}",
        names.join(" ")
    );
    Err(exit::PIPELINE)
}

/// Whether the source table has a row (PostgreSQL sources; other sources
/// answer yes, so an empty target is always refused for them).
async fn source_has_rows(config: &Config, table: &TableId) -> bool {
    let SourceConfig::Postgres(src) = &config.source else {
        return true;
    };
    let Ok(conn) = ferry_postgres_source::conn_info(src) else {
        return true;
    };
    let Ok(client) = conn.connect(Stage::Source, "source").await else {
        return true;
    };
    client
        .query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM {})", table.quoted()),
            &[],
        )
        .await
        .map_or(true, |r| r.get(0))
}
