// Ferry's tables in a Convex deployment: spread them into your schema.
//
//   import { defineSchema } from "convex/server";
//   import { ferryTables } from "./ferrySchema";
//   export default defineSchema({ ...ferryTables, /* your tables */ });
//
// Your own tables need nothing from Ferry: a row's source key and the
// version it was last written at live in `ferry_keys`, not in your documents.
import { defineTable } from "convex/server";
import { v } from "convex/values";

export const ferryTables = {
  // The pipeline's checkpoint: one document per (pipeline, entry), where an
  // entry is "position", "snapshot:<table>" or "bus:<topic>:<partition>".
  ferry_checkpoints: defineTable({
    pipeline: v.string(),
    entry: v.string(),
    value: v.any(),
  }).index("by_entry", ["pipeline", "entry"]),

  // Per sink instance, the last call that committed: a call re-sent after
  // an unknown outcome (timeout, 5xx, dropped connection) finds itself here
  // and changes nothing.
  ferry_calls: defineTable({
    writer: v.string(),
    call: v.string(),
  }).index("by_writer", ["writer"]),

  // Per target table and source key: the document that holds the row
  // (null once deleted: a tombstone), and the source version it was last
  // written at. A write older than the stored version is ignored, so a row
  // never moves back. Also the id map's "row → Convex id" half.
  ferry_keys: defineTable({
    table: v.string(),
    key: v.string(),
    doc: v.union(v.string(), v.null()),
    version: v.string(),
    // The document was allocated ahead by a reference (see ferry_ids) and
    // its row has not arrived yet.
    placeholder: v.optional(v.boolean()),
  }).index("by_key", ["table", "key"]),

  // The id map: (namespace, legacy id) → Convex id of the row that holds it.
  ferry_ids: defineTable({
    namespace: v.string(),
    legacy: v.string(),
    doc: v.string(),
  })
    .index("by_legacy", ["namespace", "legacy"])
    .index("by_doc", ["namespace", "doc"]),

  // The dead-letter queue: records that could not be mirrored.
  ferry_dlq: defineTable({
    pipeline: v.string(),
    table: v.string(),
    key: v.string(),
    op: v.string(),
    // The change as Ferry's self-describing JSON envelope (exact values);
    // its first part when longer (the rest in ferry_dlq_parts: a record of
    // a document too large for Convex is itself too large for one document).
    event: v.string(),
    eventParts: v.optional(v.number()),
    errorClass: v.string(),
    errorCode: v.union(v.string(), v.null()),
    errorMessage: v.string(),
    stage: v.string(),
    attempts: v.number(),
    firstFailedAt: v.number(),
    lastFailedAt: v.number(),
    position: v.union(v.string(), v.null()),
    origin: v.union(v.any(), v.null()),
    superseded: v.boolean(),
  })
    .index("by_row", ["pipeline", "table", "key"])
    .index("by_pipeline", ["pipeline"]),

  // Parts 1.. of a long dead-letter event, in order.
  ferry_dlq_parts: defineTable({
    record: v.id("ferry_dlq"),
    n: v.number(),
    text: v.string(),
  }).index("by_record", ["record", "n"]),
};
