// Ferry's Convex module: copy this file and ferrySchema.ts into your
// project's `convex/` folder and spread `ferryTables` into your schema (see
// docs/convex.md). Every function here is internal: Ferry calls them with
// the deployment's deploy key, never as a public API.
//
// Exactly once in effect: one `apply` call is one Convex transaction that
// writes the rows, the dead-letter records and the pipeline's checkpoint
// together, and records its own call id, so that
// - a call re-sent after an unknown outcome (timeout, 5xx, dropped
//   connection) finds its id in `ferry_calls` and changes nothing;
// - a change replayed after a restart carries a version at or below the
//   one its row was written at (`ferry_keys.version`) and is ignored: a row
//   never moves back to an older state.
//
// Built on the generic function builders of `convex/server`, so the file
// needs no generated code and type-checks in any project.
import {
  internalMutationGeneric as internalMutation,
  internalQueryGeneric as internalQuery,
} from "convex/server";
import type { GenericMutationCtx, GenericQueryCtx, GenericDataModel } from "convex/server";
import { ConvexError, v } from "convex/values";

type MutationCtx = GenericMutationCtx<GenericDataModel>;
type QueryCtx = GenericQueryCtx<GenericDataModel>;
// The generic context types know no tables; Ferry's own are declared in
// ferrySchema.ts, the user's are named at run time.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyDb = any;

/** The error code of a batch whose bus offsets were applied already. */
export const STALE_OFFSETS = "ferry-stale-offsets";
/** UTF-16 units of a dead-letter event per document. */
const EVENT_PART = 256 * 1024;

/** The error code of a record that cannot be applied (parks the record). */
export const RECORD_REFUSED = "ferry-record-refused";

const row = v.object({
  table: v.string(),
  key: v.string(),
  op: v.union(v.literal("upsert"), v.literal("patch"), v.literal("delete")),
  doc: v.optional(v.any()),
  // The source version of the row's change (fixed-width hex, ordered as
  // text); null when the source has none (MongoDB): then always written.
  version: v.union(v.string(), v.null()),
  // Id-map references to fill in before writing: `field` gets the Convex
  // id of the row that holds `legacy` in `namespace` (a document of `table`).
  refs: v.optional(
    v.array(
      v.object({
        field: v.string(),
        namespace: v.string(),
        legacy: v.string(),
        table: v.string(),
        // The owner row's key text, under which it will arrive.
        key: v.string(),
      }),
    ),
  ),
  // The row's own legacy id in an id-map namespace (it owns the namespace).
  owns: v.optional(v.object({ namespace: v.string(), legacy: v.string() })),
});

const parked = v.object({
  table: v.string(),
  key: v.string(),
  op: v.string(),
  event: v.string(),
  errorClass: v.string(),
  errorCode: v.union(v.string(), v.null()),
  errorMessage: v.string(),
  stage: v.string(),
  position: v.union(v.string(), v.null()),
  origin: v.union(v.any(), v.null()),
  superseded: v.boolean(),
});

const checkpoint = v.object({
  // Fixed-width hex of the source position, so that strings compare in
  // source order; null when the source has none (MongoDB).
  position: v.union(v.string(), v.null()),
  resumeToken: v.union(v.string(), v.null()),
  snapshots: v.array(v.object({ table: v.string(), rows: v.number(), state: v.any() })),
  bus: v.array(
    v.object({
      topic: v.string(),
      partition: v.number(),
      next: v.number(),
      position: v.union(v.string(), v.null()),
      lastTimestamp: v.union(v.number(), v.null()),
    }),
  ),
});

async function entry(ctx: QueryCtx, pipeline: string, name: string) {
  const db = ctx.db as AnyDb;
  return await db
    .query("ferry_checkpoints")
    .withIndex("by_entry", (q: AnyDb) => q.eq("pipeline", pipeline).eq("entry", name))
    .unique();
}

async function putEntry(ctx: MutationCtx, pipeline: string, name: string, value: unknown) {
  const db = ctx.db as AnyDb;
  const found = await entry(ctx, pipeline, name);
  if (found) await db.patch(found._id, { value });
  else await db.insert("ferry_checkpoints", { pipeline, entry: name, value });
}

async function keyOf(ctx: QueryCtx, table: string, key: string) {
  const db = ctx.db as AnyDb;
  return await db
    .query("ferry_keys")
    .withIndex("by_key", (q: AnyDb) => q.eq("table", table).eq("key", key))
    .unique();
}

async function idOf(ctx: QueryCtx, namespace: string, legacy: string) {
  const db = ctx.db as AnyDb;
  return await db
    .query("ferry_ids")
    .withIndex("by_legacy", (q: AnyDb) => q.eq("namespace", namespace).eq("legacy", legacy))
    .unique();
}

/**
 * The Convex id for `legacy` in `namespace`. A row not arrived yet gets its
 * document now, as a placeholder `{}` in its table that the row fills when
 * it comes (its `ferry_keys` entry is marked `placeholder`), so that the
 * reference is never lost and never dangles.
 */
async function resolve(
  ctx: MutationCtx,
  ref: { namespace: string; legacy: string; table: string; key: string },
): Promise<string> {
  const db = ctx.db as AnyDb;
  const known = await idOf(ctx, ref.namespace, ref.legacy);
  if (known) return known.doc;
  const doc = await db.insert(ref.table, {});
  await db.insert("ferry_ids", { namespace: ref.namespace, legacy: ref.legacy, doc });
  // The owner row finds its placeholder through its key when it comes.
  await db.insert("ferry_keys", { table: ref.table, key: ref.key, doc, version: "", placeholder: true });
  return doc;
}

/**
 * Applies one batch (or one part of a batch too large for one transaction)
 * and, on its last part, the pipeline's checkpoint. Returns which rows were
 * written and which were ignored as older than what the target holds.
 */
export const apply = internalMutation({
  args: {
    pipeline: v.string(),
    // The sink instance and this call: the same call id when re-sent.
    writer: v.string(),
    call: v.string(),
    // Tables to empty before the rows (truncate, a snapshot starting over).
    truncate: v.array(v.string()),
    rows: v.array(row),
    // Kafka bus: per partition, the batch's first offset; refused when a
    // committed batch already went past it.
    busFirst: v.array(v.object({ topic: v.string(), partition: v.number(), first: v.number() })),
    // Tables with parked records: rows written there supersede them.
    dlqTables: v.array(v.string()),
    parked: v.array(parked),
    // The last part of a batch carries the checkpoint.
    checkpoint: v.union(checkpoint, v.null()),
  },
  handler: async (ctx, a) => {
    const db = ctx.db as AnyDb;
    const last = await db
      .query("ferry_calls")
      .withIndex("by_writer", (q: AnyDb) => q.eq("writer", a.writer))
      .unique();
    if (last && last.call === a.call) {
      return { duplicate: true, skipped: [] as number[] };
    }
    for (const b of a.busFirst) {
      const e = await entry(ctx, a.pipeline, `bus:${b.topic}:${b.partition}`);
      if (e && b.first < e.value.next) {
        throw new ConvexError({
          code: STALE_OFFSETS,
          message: `${b.topic}[${b.partition}] offset ${b.first} is below the stored next offset ${e.value.next}`,
        });
      }
    }
    for (const table of a.truncate) {
      for await (const k of db
        .query("ferry_keys")
        .withIndex("by_key", (q: AnyDb) => q.eq("table", table))) {
        await db.delete(k._id);
      }
      for await (const d of db.query(table)) await db.delete(d._id);
    }
    const dlqTables = new Set(a.dlqTables);
    const skipped: number[] = [];
    for (let i = 0; i < a.rows.length; i++) {
      const r = a.rows[i];
      const k = await keyOf(ctx, r.table, r.key);
      const version = r.version ?? "";
      // Older than (or as old as) what the row holds: a replay. Equal
      // versions are skipped too: a version is written once per row.
      if (k && !k.placeholder && r.version !== null && k.version >= version) {
        skipped.push(i);
        continue;
      }
      if (r.op === "delete") {
        if (k?.doc) await db.delete(k.doc);
        if (k) await db.patch(k._id, { doc: null, version, placeholder: false });
        else await db.insert("ferry_keys", { table: r.table, key: r.key, doc: null, version });
      } else {
        const doc = { ...(r.doc ?? {}) };
        for (const ref of r.refs ?? []) {
          doc[ref.field] = await resolve(ctx, ref);
        }
        if (r.op === "patch") {
          if (!k?.doc) {
            throw new ConvexError({
              code: RECORD_REFUSED,
              message: `${r.table} ${r.key}: an update that keeps unchanged values of a row the target does not hold`,
            });
          }
          await db.patch(k.doc, doc);
          await db.patch(k._id, { version });
        } else if (k?.doc) {
          await db.replace(k.doc, doc);
          await db.patch(k._id, { version, placeholder: false });
        } else {
          const id = await db.insert(r.table, doc);
          if (k) await db.patch(k._id, { doc: id, version, placeholder: false });
          else await db.insert("ferry_keys", { table: r.table, key: r.key, doc: id, version });
          if (r.owns && !(await idOf(ctx, r.owns.namespace, r.owns.legacy))) {
            await db.insert("ferry_ids", { namespace: r.owns.namespace, legacy: r.owns.legacy, doc: id });
          }
        }
      }
      if (dlqTables.has(r.table)) await supersede(ctx, a.pipeline, r.table, r.key);
    }
    const now = Date.now();
    for (const p of a.parked) {
      if (!p.superseded) await supersede(ctx, a.pipeline, p.table, p.key);
      // At most 3 UTF-8 bytes per UTF-16 unit: parts stay under 1 MiB.
      const parts = Math.max(1, Math.ceil(p.event.length / EVENT_PART));
      const id = await db.insert("ferry_dlq", {
        ...p,
        event: p.event.slice(0, EVENT_PART),
        eventParts: parts,
        pipeline: a.pipeline,
        attempts: 1,
        firstFailedAt: now,
        lastFailedAt: now,
      });
      for (let n = 1; n < parts; n++) {
        await db.insert("ferry_dlq_parts", {
          record: id,
          n,
          text: p.event.slice(n * EVENT_PART, (n + 1) * EVENT_PART),
        });
      }
    }
    if (a.checkpoint) {
      const c = a.checkpoint;
      if (c.bus.length === 0 && (c.position !== null || c.resumeToken !== null)) {
        await putEntry(ctx, a.pipeline, "position", { position: c.position, resumeToken: c.resumeToken });
      }
      for (const s of c.snapshots) {
        await putEntry(ctx, a.pipeline, `snapshot:${s.table}`, { rows: s.rows, state: s.state });
      }
      for (const b of c.bus) {
        await putEntry(ctx, a.pipeline, `bus:${b.topic}:${b.partition}`, {
          next: b.next,
          position: b.position,
          lastTimestamp: b.lastTimestamp,
        });
      }
    }
    if (last) await db.patch(last._id, { call: a.call });
    else await db.insert("ferry_calls", { writer: a.writer, call: a.call });
    return { duplicate: false, skipped };
  },
});

async function supersede(ctx: MutationCtx, pipeline: string, table: string, key: string) {
  const db = ctx.db as AnyDb;
  for await (const d of db
    .query("ferry_dlq")
    .withIndex("by_row", (q: AnyDb) => q.eq("pipeline", pipeline).eq("table", table).eq("key", key))) {
    if (!d.superseded) await db.patch(d._id, { superseded: true });
  }
}

/** The pipeline's checkpoint: position, resume token, finished snapshots. */
export const checkpointOf = internalQuery({
  args: { pipeline: v.string() },
  handler: async (ctx, a) => {
    const db = ctx.db as AnyDb;
    const entries = await db
      .query("ferry_checkpoints")
      .withIndex("by_entry", (q: AnyDb) => q.eq("pipeline", a.pipeline))
      .collect();
    const position = entries.find((e: AnyDb) => e.entry === "position")?.value ?? null;
    return {
      position: position?.position ?? null,
      resumeToken: position?.resumeToken ?? null,
      snapshots: entries
        .filter((e: AnyDb) => e.entry.startsWith("snapshot:"))
        .map((e: AnyDb) => ({ table: e.entry.slice("snapshot:".length), ...e.value })),
      bus: entries
        .filter((e: AnyDb) => e.entry.startsWith("bus:"))
        .map((e: AnyDb) => ({ entry: e.entry.slice("bus:".length), ...e.value })),
      dlqTables: [
        ...new Set(
          (
            await db
              .query("ferry_dlq")
              .withIndex("by_pipeline", (q: AnyDb) => q.eq("pipeline", a.pipeline))
              .collect()
          ).map((d: AnyDb) => d.table),
        ),
      ],
    };
  },
});

/** `ferry idmap lookup`: pairs where `id` is the legacy or the Convex id. */
export const idLookup = internalQuery({
  args: { namespace: v.string(), id: v.string() },
  handler: async (ctx, a) => {
    const db = ctx.db as AnyDb;
    const byLegacy = await idOf(ctx, a.namespace, a.id);
    const byDoc = await db
      .query("ferry_ids")
      .withIndex("by_doc", (q: AnyDb) => q.eq("namespace", a.namespace).eq("doc", a.id))
      .collect();
    return [...(byLegacy ? [byLegacy] : []), ...byDoc].map((p: AnyDb) => ({
      legacy: p.legacy,
      new: p.doc,
    }));
  },
});

/** The dead-letter records of a pipeline, oldest first, in pages. */
export const dlqRecords = internalQuery({
  args: { pipeline: v.string(), cursor: v.union(v.string(), v.null()), limit: v.number() },
  handler: async (ctx, a) => {
    const db = ctx.db as AnyDb;
    return await db
      .query("ferry_dlq")
      .withIndex("by_pipeline", (q: AnyDb) => q.eq("pipeline", a.pipeline))
      .paginate({ cursor: a.cursor, numItems: a.limit });
  },
});

/** A parked record's whole change: its event text joined from its parts. */
export const dlqEvent = internalQuery({
  args: { pipeline: v.string(), id: v.string() },
  handler: async (ctx, a) => {
    const db = ctx.db as AnyDb;
    const d = await db.get(a.id);
    if (!d || d.pipeline !== a.pipeline) return null;
    let text: string = d.event;
    for await (const part of db
      .query("ferry_dlq_parts")
      .withIndex("by_record", (q: AnyDb) => q.eq("record", a.id))) {
      text += part.text;
    }
    return text;
  },
});

/** Removes dead-letter records (purged, or replayed and landed). */
export const dlqRemove = internalMutation({
  args: { pipeline: v.string(), ids: v.array(v.string()) },
  handler: async (ctx, a) => {
    const db = ctx.db as AnyDb;
    let removed = 0;
    for (const id of a.ids) {
      const d = await db.get(id);
      if (d && d.pipeline === a.pipeline) {
        for await (const part of db
          .query("ferry_dlq_parts")
          .withIndex("by_record", (q: AnyDb) => q.eq("record", id))) {
          await db.delete(part._id);
        }
        await db.delete(id);
        removed++;
      }
    }
    return removed;
  },
});

/** A replay that failed again: one more attempt, the new error. */
export const dlqFailed = internalMutation({
  args: {
    pipeline: v.string(),
    id: v.string(),
    errorClass: v.string(),
    errorCode: v.union(v.string(), v.null()),
    errorMessage: v.string(),
  },
  handler: async (ctx, a) => {
    const db = ctx.db as AnyDb;
    const d = await db.get(a.id);
    if (!d || d.pipeline !== a.pipeline) return false;
    await db.patch(a.id, {
      attempts: d.attempts + 1,
      lastFailedAt: Date.now(),
      errorClass: a.errorClass,
      errorCode: a.errorCode,
      errorMessage: a.errorMessage,
    });
    return true;
  },
});
