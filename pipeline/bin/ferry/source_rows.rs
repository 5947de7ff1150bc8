//! Source rows read the way the pipeline's snapshot reads them (the
//! PostgreSQL snapshot's text decoding, the MongoDB source's document
//! shape), for the commands that look at the source outside a run:
//! `ferry verify` (every row) and `ferry mapping check --sample` (a
//! sample). One reader per source kind, so that both commands see exactly
//! what the pipeline would.

use std::future::Future;
use std::sync::Arc;

use ferry_pipeline::config::MongoSourceConfig;
use ferry_pipeline::error::{PipelineError, Stage};
use ferry_pipeline::event::{quote_ident, ChangeEvent, TableId};
use ferry_postgres_source::pg_err;
use ferry_postgres_source::snapshot::SESSION_SETTINGS;
use futures_util::StreamExt;
use tokio_postgres::Client;

/// Where read rows go, one at a time.
pub(crate) trait RowSink {
    fn push(&mut self, ev: ChangeEvent) -> impl Future<Output = Result<(), PipelineError>>;
}

impl RowSink for Vec<ChangeEvent> {
    async fn push(&mut self, ev: ChangeEvent) -> Result<(), PipelineError> {
        Vec::push(self, ev);
        Ok(())
    }
}

/// The rows of a PostgreSQL source table, decoded as the snapshot does:
/// all of them, or the first `limit`.
pub(crate) async fn read_postgres(
    sc: &Client,
    source: &TableId,
    limit: Option<u64>,
    out: &mut impl RowSink,
) -> Result<(), PipelineError> {
    let t = ferry_postgres_source::catalog::describe(sc, source)
        .await?
        .ok_or_else(|| {
            PipelineError::fatal(
                Stage::Source,
                format!("source table {source} does not exist: table skipped"),
            )
        })?;
    let cols: Vec<String> = t
        .schema
        .columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect();
    sc.batch_execute(SESSION_SETTINGS)
        .await
        .map_err(|e| pg_err(Stage::Source, "session settings", e))?;
    let limit = limit.map(|n| format!(" LIMIT {n}")).unwrap_or_default();
    let stream = sc
        .copy_out(&format!(
            "COPY (SELECT {} FROM {}{limit}) TO STDOUT",
            cols.join(", "),
            source.quoted()
        ))
        .await
        .map_err(|e| pg_err(Stage::Source, &format!("read {source}"), e))?;
    futures_util::pin_mut!(stream);
    let mut lines = crate::parity::Lines::default();
    while let Some(line) = lines.next(&mut stream).await? {
        let row = ferry_postgres_source::snapshot::decode_row(&t, line.as_bytes())?;
        out.push(ChangeEvent::snapshot_read(Arc::clone(&t.schema), row))
            .await?;
    }
    Ok(())
}

/// The documents of a MongoDB collection as the source's snapshot shapes
/// them: all of them, or a random sample of `sample` (`$sample`).
pub(crate) async fn read_mongo(
    src: &MongoSourceConfig,
    source: &TableId,
    sample: Option<u32>,
    out: &mut impl RowSink,
) -> Result<(), PipelineError> {
    let client = ferry_mongodb_source::config::connect(src.url.expose(), "source").await?;
    let coll = client
        .database(&src.database)
        .collection::<bson::Document>(&source.name);
    let err = |e: mongodb::error::Error| {
        PipelineError::fatal(Stage::Source, format!("read collection {source}: {e}"))
    };
    let mut cursor = match sample {
        Some(n) => coll
            .aggregate([bson::doc! {"$sample": {"size": i64::from(n)}}])
            .batch_size(src.snapshot_batch_size)
            .await
            .map_err(err)?,
        None => coll
            .find(bson::doc! {})
            .batch_size(src.snapshot_batch_size)
            .await
            .map_err(err)?,
    };
    let mut shapes = ferry_mongodb_source::shape::Shapes::new(&src.database, src.scalar_columns);
    while let Some(doc) = cursor.next().await {
        let doc = doc.map_err(err)?;
        let (schema, row) =
            ferry_mongodb_source::source::document_row(&mut shapes, &source.name, &doc).map_err(
                |e| PipelineError::fatal(Stage::Decode, format!("document of {source}: {e}")),
            )?;
        out.push(ChangeEvent::snapshot_read(schema, row)).await?;
    }
    Ok(())
}
