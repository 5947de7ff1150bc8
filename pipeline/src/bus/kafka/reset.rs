//! Starting a pipeline's Kafka bus over (`ferry kafka reset`), after its
//! broker lost its data: the workers stop on it ("no longer in Kafka",
//! "made anew", "does not exist any more") and what the broker holds no
//! longer matches the target's progress.
//!
//! Here: the source's side. An empty checkpoint is written for the
//! pipeline (the `_checkpoints` topic is compacted: it replaces the last
//! one), so that the source copies every table again, each copy emptying
//! its target table first (on any number of partitions: a barrier). With
//! their progress forgotten in the target (`PostgresSink::reset_bus`), the
//! workers read the data topics from their beginning: whatever they hold
//! from before is applied and then emptied by the new copy's start. No
//! topic is deleted: it works on any broker and with any ACLs that let the
//! source run.

use super::outbox::Outbox;
use super::producer::producer_config;
use super::{ensure_topics, source_checkpoint, Topics};
use crate::checkpoint::Checkpoint;
use crate::config::KafkaConfig;
use crate::error::{PipelineError, Stage};

/// Writes an empty checkpoint for `pipeline`; returns the topic.
pub async fn forget_source_checkpoint(
    k: &KafkaConfig,
    pipeline: &str,
) -> Result<String, PipelineError> {
    let topic = Topics::new(&k.topic_prefix).checkpoints();
    ensure_topics(k, std::slice::from_ref(&topic), true, Stage::Source).await?;
    let outbox = Outbox::new(&producer_config(k))?;
    source_checkpoint::store(&outbox, &topic, pipeline, &Checkpoint::default()).await?;
    Ok(topic)
}
