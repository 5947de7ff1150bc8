// TEST-ONLY queries of the Convex test server (never part of Ferry's
// module): read a table back with each document's source key, so that the
// end-to-end tests compare the target with the source.
import { queryGeneric as query } from "convex/server";
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
