// THE CONVEX TEST SERVER's streaming export (tests only): Convex's
// `GET /api/list_snapshot`, `GET /api/document_deltas` and
// `GET /api/json_schemas` over the same convex-test store the function API
// writes, with the paging, ordering and errors of the backend
// (shared/ref/convex-http-api.md, section B; the backend's
// crates/database/src/database.rs):
// - every top-level commit is logged with its commit timestamp (ns) and the
//   document before and after, whoever wrote it (Ferry's module, the
//   test-only `testing:write` mutation);
// - list_snapshot pages 1,024 documents (`FERRY_TEST_SNAPSHOT_PAGE`), table
//   by table (by name), `_id` order inside a table, never crossing a table,
//   all pages read at the first page's `snapshot` timestamp (the log undoes
//   what committed after it);
// - document_deltas returns the commits after an exclusive `cursor` in
//   (ts, id) order, about 128 rows a page (`FERRY_TEST_DELTAS_PAGE`), but
//   always the whole of the last timestamp;
// - retention: a cursor below the window (`FERRY_TEST_RETENTION_MS`, or
//   `POST /test/retention`, or everything before `POST /test/prune`) is
//   400 `InvalidWindowToReadDocuments`, a snapshot below it 400
//   `SnapshotTooOld`, with the backend's codes.
// Numbers beyond 2^53 (`_ts`, `snapshot`, `cursor`) are written as exact
// digits: the JSON is built as text.

type Doc = Record<string, unknown>;
type Entry = { ts: bigint; id: string; table: string; prev: Doc | null; doc: Doc | null };

export const log: Entry[] = [];
const lastTs = new Map<string, bigint>();
let pruneFloor = 0n;
let retentionMs = Number(process.env.FERRY_TEST_RETENTION_MS ?? 0);
export let exportEnabled = process.env.FERRY_TEST_EXPORT !== "disabled";
const snapshotPage = Number(process.env.FERRY_TEST_SNAPSHOT_PAGE ?? 1024);
const deltasPage = Number(process.env.FERRY_TEST_DELTAS_PAGE ?? 128);
let rootDb: any = null;
let lastCommitTs = 0n;

export class HttpError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
  ) {
    super(message);
  }
}

// convex-test's own id format: a counter, then the table name.
function tableOf(id: string): string | null {
  const m = /^[0-9]+/.exec(id);
  return m && m[0].length < id.length ? id.slice(m[0].length) : null;
}

// Wraps the root database's commit: a top-level commit (the only one with
// a timestamp) is logged, its writes in `_id` order.
export function hookCommits(db: any) {
  if (rootDb !== null) return;
  rootDb = db;
  const commit = db.commit.bind(db);
  db.commit = (commitTs: bigint | null = null) => {
    const top = db._writes.length === 1 && commitTs !== null;
    const writes: Record<string, Doc | null> = top ? db._writes[0] : {};
    const before = new Map<string, Doc | null>();
    if (top) for (const id of Object.keys(writes)) before.set(id, db._documents[id] ?? null);
    commit(commitTs);
    if (!top) return;
    lastCommitTs = commitTs as bigint;
    for (const id of [...before.keys()].sort()) {
      const table = tableOf(id);
      if (table === null || table.startsWith("_")) continue;
      const prev = before.get(id) ?? null;
      const doc = db._documents[id] ?? null;
      if (prev === null && doc === null) continue;
      log.push({ ts: commitTs as bigint, id, table, prev, doc });
      if (doc === null) lastTs.delete(id);
      else lastTs.set(id, commitTs as bigint);
    }
  };
}

function nowNs(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}

// The oldest timestamp still readable.
function floor(): bigint {
  const window = retentionMs > 0 ? nowNs() - BigInt(retentionMs) * 1_000_000n : 0n;
  return window > pruneFloor ? window : pruneFloor;
}

export function setRetention(body: { ms?: number }) {
  retentionMs = Number(body.ms ?? 0);
}
export function prune() {
  pruneFloor = lastCommitTs;
}
export function setExport(enabled: boolean) {
  exportEnabled = enabled;
}

export function checkEnabled() {
  if (!exportEnabled) {
    throw new HttpError(
      403,
      "StreamingExportNotEnabled",
      "Streaming export is only available on the Convex Professional plan. See https://www.convex.dev/plans to upgrade.",
    );
  }
}

// The encoded or clean JSON of a document, with the metadata keys first.
function docJson(
  meta: { table: string; ts: bigint; deleted?: boolean },
  doc: Doc,
  encode: (d: Doc) => unknown,
): string {
  const head = `{"_component":"","_table":${JSON.stringify(meta.table)},"_ts":${meta.ts}${
    meta.deleted === undefined ? "" : `,"_deleted":${meta.deleted}`
  }`;
  const body = JSON.stringify(encode(doc));
  return body === "{}" ? `${head}}` : `${head},${body.slice(1)}`;
}

function tablesNow(): string[] {
  const names = new Set<string>();
  for (const id of Object.keys(rootDb?._documents ?? {})) {
    const t = tableOf(id);
    if (t !== null && !t.startsWith("_")) names.add(t);
  }
  for (const e of log) names.add(e.table);
  return [...names].sort();
}

// One table's documents at `snapshot`, in `_id` order; the last one built
// is kept (a snapshot is read page after page).
let cached: { key: string; docs: [string, Doc][] } | null = null;
function tableAt(table: string, snapshot: bigint): [string, Doc][] {
  const key = `${table}@${snapshot}@${log.length}`;
  if (cached?.key === key) return cached.docs;
  const state = new Map<string, Doc | null>();
  for (const [id, d] of Object.entries(rootDb?._documents ?? {})) {
    if (tableOf(id) === table) state.set(id, d as Doc);
  }
  for (let i = log.length - 1; i >= 0 && log[i].ts > snapshot; i--) {
    if (log[i].table === table) state.set(log[i].id, log[i].prev);
  }
  const docs = [...state].filter((e): e is [string, Doc] => e[1] !== null).sort((a, b) => (a[0] < b[0] ? -1 : 1));
  cached = { key, docs };
  return docs;
}

// The `_ts` of a document's version at `snapshot`.
function tsAt(id: string, snapshot: bigint): bigint {
  const now = lastTs.get(id);
  if (now !== undefined && now <= snapshot) return now;
  for (let i = log.length - 1; i >= 0; i--) {
    if (log[i].id === id && log[i].ts <= snapshot) return log[i].ts;
  }
  return 0n;
}

export function listSnapshot(q: URLSearchParams, encode: (d: Doc) => unknown): string {
  checkEnabled();
  let snapshot = lastCommitTs;
  if (q.has("snapshot")) {
    try {
      snapshot = BigInt(q.get("snapshot")!);
    } catch {
      throw new HttpError(400, "BadRequest", `snapshot ${q.get("snapshot")} is not an integer`);
    }
    if (snapshot > lastCommitTs && snapshot > nowNs()) {
      throw new HttpError(400, "SnapshotTooNew", `Snapshot timestamp ${snapshot} is in the future.`);
    }
  }
  if (snapshot < floor()) {
    throw new HttpError(400, "SnapshotTooOld", `Snapshot timestamp ${snapshot} is too old.`);
  }
  const only = q.get("tableName") ?? q.get("table_name");
  const tables = only !== null ? [only] : tablesNow();
  let at: { table: string; id: string | null } = { table: tables[0] ?? "", id: null };
  if (q.get("cursor")) {
    try {
      at = JSON.parse(q.get("cursor")!);
    } catch {
      throw new HttpError(400, "InvalidListSnapshotCursor", `Invalid cursor ${q.get("cursor")}`);
    }
  }
  const values: string[] = [];
  let cursor: string | null = null;
  let hasMore = false;
  const ti = tables.indexOf(at.table);
  if (ti >= 0) {
    const docs = tableAt(at.table, snapshot);
    let start = 0;
    if (at.id !== null) {
      while (start < docs.length && docs[start][0] <= at.id) start++;
    }
    const page = docs.slice(start, start + snapshotPage);
    for (const [id, d] of page) values.push(docJson({ table: at.table, ts: tsAt(id, snapshot) }, d, encode));
    if (start + page.length < docs.length) {
      hasMore = true;
      cursor = JSON.stringify({ table: at.table, id: page[page.length - 1][0] });
    } else if (ti + 1 < tables.length) {
      // A page never crosses into the next table.
      hasMore = true;
      cursor = JSON.stringify({ table: tables[ti + 1], id: null });
    }
  }
  return `{"values":[${values.join(",")}],"snapshot":${snapshot},"cursor":${JSON.stringify(cursor)},"hasMore":${hasMore}}`;
}

export function documentDeltas(q: URLSearchParams, encode: (d: Doc) => unknown): string {
  checkEnabled();
  const raw = q.get("cursor");
  if (raw === null) throw new HttpError(400, "DocumentDeltasCursorRequired", "document_deltas requires a cursor");
  let cursor: bigint;
  try {
    cursor = BigInt(raw);
  } catch {
    throw new HttpError(400, "BadRequest", `cursor ${raw} is not an integer`);
  }
  if (cursor + 1n < floor()) {
    throw new HttpError(
      400,
      "InvalidWindowToReadDocuments",
      `Trying to synchronize from timestamp ${cursor + 1n}, which is older than the database’s retention window. ` +
        `This may happen if you paused your Fivetran or Airbyte connector for a long period of time. Please perform a full sync of the connector.`,
    );
  }
  const only = q.get("tableName") ?? q.get("table_name");
  const upper = lastCommitTs;
  // First entry after the cursor.
  let lo = 0;
  let hi = log.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (log[mid].ts <= cursor) lo = mid + 1;
    else hi = mid;
  }
  const values: string[] = [];
  let read = 0;
  let i = lo;
  let newCursor: bigint | null = null;
  for (; i < log.length && log[i].ts <= upper; i++) {
    const e = log[i];
    if (newCursor !== null && e.ts > newCursor) break;
    read++;
    if (only === null || e.table === only) {
      values.push(
        e.doc === null
          ? docJson({ table: e.table, ts: e.ts, deleted: true }, { _id: e.id }, (d) => d)
          : docJson({ table: e.table, ts: e.ts, deleted: false }, e.doc, encode),
      );
    }
    // The page ends after this timestamp: a transaction is never split.
    if (newCursor === null && (read >= deltasPage || values.length >= deltasPage)) newCursor = e.ts;
  }
  const hasMore = i < log.length && log[i].ts <= upper;
  const out = hasMore ? newCursor! : upper > cursor ? upper : cursor;
  return `{"values":[${values.join(",")}],"cursor":${out},"hasMore":${hasMore}}`;
}

function typeOf(v: unknown): object {
  if (v === null) return { type: "null" };
  if (typeof v === "bigint") return { type: "integer", $description: "int64 -> little-endian -> base64" };
  if (typeof v === "number") return { type: "number" };
  if (typeof v === "boolean") return { type: "boolean" };
  if (typeof v === "string") return { type: "string" };
  if (v instanceof ArrayBuffer) return { type: "string", $description: "bytes -> base64" };
  if (Array.isArray(v)) return { type: "array" };
  return { type: "object" };
}

// Each table's shape, from its documents (a deployment without a schema
// infers it the same way).
export function jsonSchemas(schemaTables: string[]): string {
  checkEnabled();
  const out: Record<string, any> = {};
  for (const t of new Set([...schemaTables, ...tablesNow()])) {
    if (t.startsWith("_")) continue;
    out[t] = {
      type: "object",
      properties: { _id: { type: "string", $description: `Id(${t})` }, _creationTime: { type: "number" } },
      additionalProperties: false,
      required: ["_id", "_creationTime"],
      $schema: "http://json-schema.org/draft-07/schema#",
    };
  }
  for (const [id, d] of Object.entries(rootDb?._documents ?? {})) {
    const t = tableOf(id);
    if (t === null || !out[t]) continue;
    for (const [k, v] of Object.entries(d as Doc)) {
      if (!out[t].properties[k]) out[t].properties[k] = typeOf(v);
    }
  }
  return JSON.stringify(out);
}
