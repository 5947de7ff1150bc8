//! A source's checkpoint on the Kafka bus: which snapshots are complete and
//! where a token-resumed source continues, as one record per pipeline in
//! the compacted `<prefix>._checkpoints` topic (what Kafka Connect keeps in
//! its offsets topic).
//!
//! On the embedded bus the sink keeps this in the target, in the same
//! transaction as the rows. On Kafka, a source's output is durable once
//! Kafka acknowledged it, so the record is written only after every
//! message before it was acknowledged (see [`super::producer`]).

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::outbox::{Outbox, Outgoing};
use super::{client_config, kafka_err};
use crate::checkpoint::{Checkpoint, SnapshotRecord};
use crate::config::KafkaConfig;
use crate::error::{PipelineError, Stage};
use crate::event::{Position, TableId};

#[derive(Serialize, Deserialize)]
struct Stored {
    position: Option<Position>,
    snapshots: Vec<StoredSnapshot>,
    resume_token: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    table: TableId,
    rows: u64,
    state: serde_json::Value,
}

/// The record's value for `c`.
pub fn encode(c: &Checkpoint) -> Vec<u8> {
    let mut snapshots: Vec<StoredSnapshot> = c
        .snapshots
        .iter()
        .map(|(t, r)| StoredSnapshot {
            table: t.clone(),
            rows: r.rows,
            state: r.state.clone(),
        })
        .collect();
    snapshots.sort_by(|a, b| a.table.cmp(&b.table));
    serde_json::to_vec(&Stored {
        position: c.position,
        snapshots,
        resume_token: c.resume_token.clone(),
    })
    .expect("a checkpoint serializes")
}

/// The checkpoint in a record's value.
pub fn decode(bytes: &[u8]) -> Result<Checkpoint, PipelineError> {
    let s: Stored = serde_json::from_slice(bytes).map_err(|e| {
        PipelineError::fatal(
            Stage::Source,
            format!("unreadable source checkpoint in Kafka: {e}"),
        )
    })?;
    let mut snapshots = HashMap::new();
    for sn in s.snapshots {
        snapshots.insert(
            sn.table,
            SnapshotRecord {
                rows: sn.rows,
                state: sn.state,
            },
        );
    }
    Ok(Checkpoint {
        position: s.position,
        snapshots,
        resume_token: s.resume_token,
    })
}

/// Reads the last checkpoint of `pipeline` (empty when there is none).
pub async fn load(k: &KafkaConfig, pipeline: &str) -> Result<Checkpoint, PipelineError> {
    let topic = super::Topics::new(&k.topic_prefix).checkpoints();
    let k = k.clone();
    let pipeline = pipeline.to_string();
    // librdkafka's consumer API is blocking; this runs once at start.
    tokio::task::spawn_blocking(move || read_last(&k, &topic, &pipeline))
        .await
        .map_err(|e| PipelineError::fatal(Stage::Source, format!("checkpoint reader: {e}")))?
}

fn read_last(k: &KafkaConfig, topic: &str, pipeline: &str) -> Result<Checkpoint, PipelineError> {
    let consumer: BaseConsumer = client_config(k, &k.consumer)
        .set("group.id", format!("ferry-{pipeline}-checkpoint-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| kafka_err(Stage::Source, "create a Kafka consumer", e))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(30))
        .map_err(|e| kafka_err(Stage::Source, &format!("read the end of {topic}"), e))?;
    if high <= low {
        return Ok(Checkpoint::default());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(low))
        .map_err(|e| kafka_err(Stage::Source, "assign", e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| kafka_err(Stage::Source, &format!("read {topic}"), e))?;
    let mut last: Option<Vec<u8>> = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if std::time::Instant::now() > deadline {
            return Err(PipelineError::transient(
                Stage::Source,
                format!("timed out reading {topic} up to offset {high}"),
            ));
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(e)) => return Err(kafka_err(Stage::Source, &format!("read {topic}"), e)),
            Some(Ok(m)) => {
                if m.key() == Some(pipeline.as_bytes()) {
                    // A tombstone (no payload) forgets the checkpoint.
                    last = m.payload().map(<[u8]>::to_vec);
                }
                if m.offset() + 1 >= high {
                    break;
                }
            }
        }
    }
    match last {
        Some(bytes) => decode(&bytes),
        None => Ok(Checkpoint::default()),
    }
}

/// Writes `c` as `pipeline`'s checkpoint and waits for Kafka's ack.
pub async fn store(
    outbox: &Outbox,
    topic: &str,
    pipeline: &str,
    c: &Checkpoint,
) -> Result<(), PipelineError> {
    let value = encode(c);
    outbox
        .send_and_wait(Outgoing {
            topic,
            key: pipeline.as_bytes(),
            payload: &value,
            headers: None,
            partition: None,
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut c = Checkpoint {
            position: Some(Position {
                commit_lsn: 42,
                ordinal: 3,
            }),
            snapshots: HashMap::new(),
            resume_token: Some("{\"_data\":\"82\"}".into()),
        };
        c.snapshots.insert(
            TableId::new("public", "t"),
            SnapshotRecord {
                rows: 7,
                state: serde_json::json!({"xmin": 5}),
            },
        );
        assert_eq!(decode(&encode(&c)).unwrap(), c);
        assert!(decode(b"not json").is_err());
    }
}
