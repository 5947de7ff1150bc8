// Unit tests of Ferry's Convex module (sinks/convex/convex/ferry.ts) under
// convex-test: the call guard, the version guard, tombstones, the
// checkpoint, stale bus offsets, the dead-letter queue, the id map and its
// placeholders. Run with `npx vitest run` (tests/run.sh does).
import { copyFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { convexTest } from "convex-test";
import { makeFunctionReference } from "convex/server";
import { beforeAll, describe, expect, test } from "vitest";

const here = dirname(fileURLToPath(import.meta.url));
beforeAll(() => {
  for (const f of ["ferry.ts", "ferrySchema.ts"]) {
    copyFileSync(join(here, "..", "..", "sinks", "convex", "convex", f), join(here, "convex", f));
  }
});

async function setup() {
  const schema = (await import("./convex/schema.ts")).default;
  return convexTest({
    schema,
    modules: {
      "./convex/_generated/api.js": async () => ({}),
      "./convex/ferry.ts": () => import("./convex/ferry.ts"),
      "./convex/testing.ts": () => import("./convex/testing.ts"),
    },
    transactionLimits: true,
  });
}

const apply = makeFunctionReference<"mutation">("ferry:apply");
const checkpointOf = makeFunctionReference<"query">("ferry:checkpointOf");
const idLookup = makeFunctionReference<"query">("ferry:idLookup");
const dump = makeFunctionReference<"query">("testing:dump");

function call(over: Record<string, unknown>) {
  return {
    pipeline: "p",
    writer: "w",
    call: "c",
    truncate: [],
    rows: [],
    busFirst: [],
    dlqTables: [],
    parked: [],
    checkpoint: null,
    ...over,
  };
}
const up = (key: string, version: string | null, doc: object) => ({ table: "items", key, op: "upsert", version, doc });
const cp = (position: string) => ({ position, resumeToken: null, snapshots: [], bus: [] });

describe("ferry:apply", () => {
  test("a re-sent call changes nothing", async () => {
    const t = await setup();
    const args = call({ call: "c1", rows: [up('["1"]', "01", { n: 1 })], checkpoint: cp("01") });
    expect((await t.mutation(apply, args)).duplicate).toBe(false);
    expect((await t.mutation(apply, args)).duplicate).toBe(true);
    const d = await t.query(dump, { table: "items" });
    expect(d.rows).toHaveLength(1);
    expect(d.documents).toBe(1);
    expect((await t.query(checkpointOf, { pipeline: "p" })).position).toBe("01");
  });

  test("a row never moves back to an older version; deletes leave tombstones", async () => {
    const t = await setup();
    await t.mutation(apply, call({ call: "a", rows: [up('["1"]', "05", { n: 5 })] }));
    const older = await t.mutation(apply, call({ call: "b", rows: [up('["1"]', "03", { n: 3 })] }));
    expect(older.skipped).toEqual([0]);
    const same = await t.mutation(apply, call({ call: "c", rows: [up('["1"]', "05", { n: 5 })] }));
    expect(same.skipped).toEqual([0]);
    await t.mutation(apply, call({ call: "d", rows: [{ table: "items", key: '["1"]', op: "delete", version: "07" }] }));
    // A replayed insert older than the delete does not bring the row back.
    await t.mutation(apply, call({ call: "e", rows: [up('["1"]', "06", { n: 6 })] }));
    expect((await t.query(dump, { table: "items" })).documents).toBe(0);
    await t.mutation(apply, call({ call: "f", rows: [up('["1"]', "08", { n: 8 })] }));
    const d = await t.query(dump, { table: "items" });
    expect(d.rows.map((r: any) => r.doc.n)).toEqual([8]);
  });

  test("a truncate empties the table and forgets its versions", async () => {
    const t = await setup();
    await t.mutation(apply, call({ call: "a", rows: [up('["1"]', "05", { n: 5 }), up('["2"]', "05", { n: 2 })] }));
    await t.mutation(apply, call({ call: "b", truncate: ["items"], rows: [up('["1"]', "05", { n: 9 })] }));
    const d = await t.query(dump, { table: "items" });
    expect(d.documents).toBe(1);
    expect(d.rows[0].doc.n).toBe(9);
  });

  test("stale bus offsets are refused", async () => {
    const t = await setup();
    const bus = { topic: "t", partition: 0, next: 10, position: null, lastTimestamp: null };
    await t.mutation(apply, call({ call: "a", busFirst: [{ topic: "t", partition: 0, first: 0 }], checkpoint: { ...cp("01"), bus: [bus] } }));
    await expect(
      t.mutation(apply, call({ call: "b", busFirst: [{ topic: "t", partition: 0, first: 5 }] })),
    ).rejects.toThrow(/ferry-stale-offsets|below the stored next offset/);
    expect((await t.query(checkpointOf, { pipeline: "p" })).bus[0].next).toBe(10);
  });

  test("parked records are superseded by a later write of their row", async () => {
    const t = await setup();
    const parked = {
      table: "items", key: '["1"]', op: "upsert", event: "{}", errorClass: "permanent", errorCode: "x",
      errorMessage: "bad", stage: "sink", position: null, origin: null, superseded: false,
    };
    await t.mutation(apply, call({ call: "a", parked: [parked] }));
    expect((await t.query(checkpointOf, { pipeline: "p" })).dlqTables).toEqual(["items"]);
    await t.mutation(apply, call({ call: "b", dlqTables: ["items"], rows: [up('["1"]', "02", { n: 1 })] }));
    const records = await t.run(async (ctx) => await ctx.db.query("ferry_dlq").collect());
    expect(records.map((r: any) => r.superseded)).toEqual([true]);
  });

  test("a dead-letter event longer than a document is kept whole, in parts", async () => {
    const t = await setup();
    const event = "e".repeat(1_100_000);
    const parked = {
      table: "items", key: '["9"]', op: "upsert", event, errorClass: "permanent", errorCode: "convex-document-too-large",
      errorMessage: "too large", stage: "sink", position: null, origin: null, superseded: false,
    };
    await t.mutation(apply, call({ call: "a", parked: [parked] }));
    const whole = await t.run(async (ctx: any) => {
      const [r] = await ctx.db.query("ferry_dlq").collect();
      const parts = await ctx.db.query("ferry_dlq_parts").collect();
      return r.event + parts.sort((x: any, y: any) => x.n - y.n).map((p: any) => p.text).join("");
    });
    expect(whole).toBe(event);
  });

  test("a reference to a row not arrived yet gets a placeholder the row fills", async () => {
    const t = await setup();
    const order = {
      table: "orders", key: '["o1"]', op: "upsert", version: "01", doc: { total: 3 },
      refs: [{ field: "user", namespace: "users", legacy: "u1", table: "users", key: '["u1"]' }],
    };
    await t.mutation(apply, call({ call: "a", rows: [order] }));
    const [pair] = await t.query(idLookup, { namespace: "users", id: "u1" });
    const users = await t.query(dump, { table: "users" });
    expect(users.rows).toHaveLength(1);
    expect(users.rows[0].placeholder).toBe(true);
    expect(users.rows[0].doc._id).toBe(pair.new);
    // The row arrives: it fills the placeholder, same id.
    await t.mutation(apply, call({ call: "b", rows: [{ table: "users", key: '["u1"]', op: "upsert", version: "02", doc: { name: "Ada" }, owns: { namespace: "users", legacy: "u1" } }] }));
    const after = await t.query(dump, { table: "users" });
    expect(after.documents).toBe(1);
    expect(after.rows[0].doc).toMatchObject({ _id: pair.new, name: "Ada" });
    const orders = await t.query(dump, { table: "orders" });
    expect(orders.rows[0].doc.user).toBe(pair.new);
    expect(await t.query(idLookup, { namespace: "users", id: pair.new })).toEqual([{ legacy: "u1", new: pair.new }]);
  });

  test("a record that breaks the user's validators fails the call as a whole", async () => {
    const t = await setup();
    await expect(
      t.mutation(apply, call({ call: "a", rows: [up('["1"]', "01", {}), { table: "strict_items", key: '["1"]', op: "upsert", version: "01", doc: { id: 1 } }] })),
    ).rejects.toThrow(/Validator|validator|match the schema/);
    expect((await t.query(dump, { table: "items" })).documents).toBe(0);
  });
});
