// TEST-ONLY queries of the Convex test server (never part of Ferry's
// module): read a table back with each document's source key, so that the
// end-to-end tests compare the target with the source.
import { mutationGeneric, queryGeneric as query } from "convex/server";
import { v } from "convex/values";

export const dump = query({
  args: { table: v.string() },
  handler: async (ctx, a) => {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const db = ctx.db as any;
    const keys = await db
      .query("ferry_keys")
      // eslint-disable-next-line @typescript-eslint/no-explicit-any
      .withIndex("by_key", (q: any) => q.eq("table", a.table))
      .collect();
    // One scan per table, joined here: a get per key would pass Convex's
    // 4096 index ranges per function.
    const all = await db.query(a.table).collect();
    const byId = new Map(all.map((d: any) => [d._id, d]));
    const out = [];
    for (const k of keys) {
      if (k.doc === null) continue;
      out.push({ key: k.key, placeholder: k.placeholder ?? false, doc: byId.get(k.doc) ?? null });
    }
    // Documents no key points at would be rows Ferry lost track of.
    return { rows: out, documents: all.length };
  },
});

export const table = query({
  args: { table: v.string() },
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  handler: async (ctx, a) => await (ctx.db as any).query(a.table).collect(),
});

// Writes documents as an application would: one call, one transaction.
// `ops`: `{op: "insert", table, doc}`, `{op: "patch"|"replace", id, doc}`,
// `{op: "delete", id}`; returns each op's document id.
export const write = mutationGeneric({
  args: { ops: v.array(v.any()) },
  handler: async (ctx, a) => {
    // eslint-disable-next-line @typescript-eslint/no-explicit-any
    const db = ctx.db as any;
    const ids: string[] = [];
    for (const o of a.ops) {
      if (o.op === "insert") ids.push(await db.insert(o.table, o.doc));
      else if (o.op === "patch") (await db.patch(o.id, o.doc), ids.push(o.id));
      else if (o.op === "replace") (await db.replace(o.id, o.doc), ids.push(o.id));
      else if (o.op === "delete") (await db.delete(o.id), ids.push(o.id));
      else throw new Error(`unknown op ${o.op}`);
    }
    return ids;
  },
});
