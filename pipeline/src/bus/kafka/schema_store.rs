//! Where writer schemas live when no schema registry is configured: the
//! compacted `<prefix>._schemas` topic, one record per schema keyed by its
//! fingerprint (hex). A source publishes a schema, and waits for Kafka's
//! ack, before the first message written with it; a worker that meets an
//! unknown fingerprint reads the topic to its end.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::outbox::{Outbox, Outgoing};
use super::{client_config, kafka_err};
use crate::config::KafkaConfig;
use crate::envelope::NewSchema;
use crate::error::{PipelineError, Stage};

/// Publishes `schema` and waits until Kafka has it.
pub async fn publish(
    outbox: &Outbox,
    topic: &str,
    schema: &NewSchema,
) -> Result<(), PipelineError> {
    let key = format!("{:016x}", schema.fingerprint);
    outbox
        .send_and_wait(Outgoing {
            topic,
            key: key.as_bytes(),
            payload: schema.avro_json.as_bytes(),
            headers: None,
            partition: None,
        })
        .await
}

/// Every schema in the topic, oldest first.
pub async fn read_all(k: &KafkaConfig, pipeline: &str) -> Result<Vec<String>, PipelineError> {
    let topic = super::Topics::new(&k.topic_prefix).schemas();
    let k = k.clone();
    let group = format!("ferry-{pipeline}-schema-reader");
    tokio::task::spawn_blocking(move || read_blocking(&k, &topic, &group))
        .await
        .map_err(|e| PipelineError::fatal(Stage::Decode, format!("schema reader: {e}")))?
}

fn read_blocking(k: &KafkaConfig, topic: &str, group: &str) -> Result<Vec<String>, PipelineError> {
    let consumer: BaseConsumer = client_config(k, &k.consumer)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| kafka_err(Stage::Decode, "create a Kafka consumer", e))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(30))
        .map_err(|e| kafka_err(Stage::Decode, &format!("read the end of {topic}"), e))?;
    let mut out = Vec::new();
    if high <= low {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(low))
        .map_err(|e| kafka_err(Stage::Decode, "assign", e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| kafka_err(Stage::Decode, &format!("read {topic}"), e))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if std::time::Instant::now() > deadline {
            return Err(PipelineError::transient(
                Stage::Decode,
                format!("timed out reading {topic} up to offset {high}"),
            ));
        }
        match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(e)) => return Err(kafka_err(Stage::Decode, &format!("read {topic}"), e)),
            Some(Ok(m)) => {
                if let Some(p) = m.payload() {
                    out.push(String::from_utf8_lossy(p).into_owned());
                }
                if m.offset() + 1 >= high {
                    return Ok(out);
                }
            }
        }
    }
}
