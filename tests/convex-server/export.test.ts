// Unit tests of the Convex test server's export routes (export.ts), over
// HTTP against the real server process: paging limits, a timestamp never
// split, the snapshot read at one timestamp while writes go on, deletes,
// exact int64 timestamps, retention, auth, the export switch.
// Run with `npx vitest run` (tests/run.sh does).
import { spawn, type ChildProcess } from "node:child_process";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, expect, test } from "vitest";

const here = dirname(fileURLToPath(import.meta.url));
const KEY = "export-test|0";
let server: ChildProcess;
let url = "";

beforeAll(async () => {
  server = spawn("node", ["--import", "tsx", "server.ts"], {
    cwd: here,
    env: { ...process.env, FERRY_TEST_DEPLOY_KEY: KEY, PORT: "0", FERRY_TEST_SNAPSHOT_PAGE: "2", FERRY_TEST_DELTAS_PAGE: "3" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  url = await new Promise<string>((resolve, reject) => {
    server.stdout!.on("data", (d: Buffer) => {
      const m = /listening (\d+)/.exec(d.toString());
      if (m) resolve(`http://127.0.0.1:${m[1]}`);
    });
    server.on("exit", (c) => reject(new Error(`server exited ${c}`)));
  });
}, 30_000);
afterAll(() => server.kill());

async function write(ops: object[]): Promise<string[]> {
  const r = await fetch(`${url}/api/mutation`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Convex ${KEY}` },
    body: JSON.stringify({ path: "testing:write", args: { ops } }),
  });
  const body = await r.json();
  expect(body.status).toBe("success");
  return body.value;
}

async function get(route: string, q: Record<string, string>, key = KEY) {
  const r = await fetch(`${url}/api/${route}?${new URLSearchParams({ format: "convex_encoded_json", ...q })}`, {
    headers: key ? { authorization: `Convex ${key}` } : {},
  });
  const text = await r.text();
  return { status: r.status, text, body: JSON.parse(text) };
}

// `_ts`, `snapshot` and `cursor` as exact digits (they exceed 2^53).
const digits = (text: string, key: string) => [...text.matchAll(new RegExp(`"${key}":(\\d+)`, "g"))].map((m) => BigInt(m[1]));

test("export routes: paging, whole timestamps, snapshot at one timestamp, deletes, retention", async () => {
  const start = (await get("list_snapshot", { tableName: "none" })).text;
  const cursor0 = digits(start, "snapshot")[0];
  // One transaction of 5 documents, then 2 single writes.
  const ids = await write([1, 2, 3, 4, 5].map((i) => ({ op: "insert", table: "t", doc: { i: { $integer: Buffer.from(new BigInt64Array([BigInt(i)]).buffer).toString("base64") } } })));
  await write([{ op: "patch", id: ids[0], doc: { p: true } }]);
  await write([{ op: "delete", id: ids[1] }]);

  // Deltas: the 5-document timestamp comes whole (page size 3).
  let d = await get("document_deltas", { cursor: String(cursor0) });
  expect(d.body.values).toHaveLength(5);
  expect(new Set(digits(d.text, "_ts")).size).toBe(1);
  expect(d.body.hasMore).toBe(true);
  const values = [...d.body.values];
  let c = digits(d.text, "cursor")[0];
  while (true) {
    d = await get("document_deltas", { cursor: String(c) });
    values.push(...d.body.values);
    c = digits(d.text, "cursor")[0];
    if (!d.body.hasMore) break;
  }
  expect(values).toHaveLength(7);
  expect(values[6]).toMatchObject({ _deleted: true, _id: ids[1], _table: "t" });
  expect(Object.keys(values[6]).sort()).toEqual(["_component", "_deleted", "_id", "_table", "_ts"]);
  expect(values[5]).toMatchObject({ _deleted: false, p: true });

  // Snapshot: 2 a page, at the first page's timestamp, while writes go on.
  let s = await get("list_snapshot", { tableName: "t" });
  const snap = digits(s.text, "snapshot")[0];
  const seen = [...s.body.values];
  await write([{ op: "delete", id: ids[2] }, { op: "insert", table: "t", doc: { late: true } }]);
  while (s.body.hasMore) {
    s = await get("list_snapshot", { tableName: "t", snapshot: String(snap), cursor: s.body.cursor });
    expect(s.body.values.length).toBeLessThanOrEqual(2);
    seen.push(...s.body.values);
  }
  expect(seen.map((v) => v._id)).toEqual([ids[0], ids[2], ids[3], ids[4]]);

  // Retention: a cursor before the pruned log is refused with Convex's code.
  await fetch(`${url}/test/prune`, { method: "POST", body: "{}" });
  const old = await get("document_deltas", { cursor: String(cursor0) });
  expect(old.status).toBe(400);
  expect(old.body.code).toBe("InvalidWindowToReadDocuments");
  expect((await get("list_snapshot", { snapshot: String(snap) })).body.code).toBe("SnapshotTooOld");

  // Auth and the export switch.
  expect((await get("json_schemas", {}, "")).status).toBe(401);
  expect((await get("json_schemas", {})).body.t.properties.i.type).toBe("integer");
  await fetch(`${url}/test/export`, { method: "POST", body: JSON.stringify({ enabled: false }) });
  const off = await get("json_schemas", {});
  expect(off.status).toBe(403);
  expect(off.body.code).toBe("StreamingExportNotEnabled");
});
