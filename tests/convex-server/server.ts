// THE CONVEX TEST SERVER (tests only; not a Convex backend, not a product).
//
// Serves Convex's HTTP function API (`POST /api/mutation`, `POST /api/query`)
// by running Ferry's real Convex module (sinks/convex/convex/, copied into
// ./convex as a user copies it into their project) and a test schema with
// validators inside `convex-test`, Convex's own in-memory implementation of
// the function runtime (transactional per call, schema validation and
// per-transaction limits enforced). What it adds around it mimics the
// backend's HTTP layer (see shared/ref/convex-http-api.md):
// - deploy-key auth: `Authorization: Convex <key>`; internal functions need it;
// - Convex-encoded JSON arguments (`$integer`, `$bytes`, `$float`);
// - `{"status":"success"|"error"}` bodies with HTTP 200, errors around
//   execution as `{"code","message"}` with their HTTP status;
// - one function call at a time (the backend's transactions are
//   serializable; convex-test's interleave if run concurrently).
// - the streaming export routes (`GET /api/list_snapshot`,
//   `/api/document_deltas`, `/api/json_schemas`; see export.ts) over the
//   same store, fed by a log of every commit.
// Test routes: `POST /test/faults` injects failures (function and export
// routes alike), `GET /test/audit` reports rows the module wrote twice at
// the same version, `POST /test/retention {"ms"}` sets the change log's
// retention window, `POST /test/prune` drops the log up to now,
// `POST /test/export {"enabled"}` switches the export on or off. The
// test-only mutation `testing:write` writes documents as an application
// would (one call, one transaction).
//
// Environment: FERRY_TEST_DEPLOY_KEY (required), PORT (default 0 = any),
// FERRY_TEST_RETENTION_MS, FERRY_TEST_EXPORT=disabled,
// FERRY_TEST_SNAPSHOT_PAGE, FERRY_TEST_DELTAS_PAGE (export.ts).
// Prints `listening <port>` on stdout once ready.
import { AsyncLocalStorage } from "node:async_hooks";
import { copyFileSync } from "node:fs";
import { createServer, IncomingMessage, ServerResponse } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const moduleDir = join(here, "..", "..", "sinks", "convex", "convex");
for (const f of ["ferry.ts", "ferrySchema.ts"]) {
  copyFileSync(join(moduleDir, f), join(here, "convex", f));
}

// convex-test keeps its store in an AsyncLocalStorage context and exports
// no handle on it: the first context it enters (any call) is caught here,
// and its root database's commits are logged (export.ts).
const exportMod = await import("./export.ts");
const alsRun = AsyncLocalStorage.prototype.run;
AsyncLocalStorage.prototype.run = function (this: AsyncLocalStorage<unknown>, store: any, cb: any, ...rest: any[]) {
  if (store && typeof store === "object" && store.components && store.transactionManager) {
    exportMod.hookCommits(store.components[""].db);
  }
  return alsRun.call(this, store, cb, ...rest);
} as typeof alsRun;

const { convexTest } = await import("convex-test");
const { makeFunctionReference } = await import("convex/server");
const { jsonToConvex, convexToJson } = await import("convex/values");
const schema = (await import("./convex/schema.ts")).default;

const modules: Record<string, () => Promise<unknown>> = {
  // convex-test finds the functions' root through the `_generated` folder.
  "./convex/_generated/api.js": async () => ({}),
  "./convex/ferry.ts": () => import("./convex/ferry.ts"),
  "./convex/testing.ts": () => import("./convex/testing.ts"),
};
const t = convexTest({ schema, modules, transactionLimits: true });

const deployKey = process.env.FERRY_TEST_DEPLOY_KEY;
if (!deployKey) {
  console.error("FERRY_TEST_DEPLOY_KEY must be set");
  process.exit(2);
}

// `scope`: only the function API (`functions`) or only the export routes
// (`export`); any call when absent.
type Fault = { mode: "429" | "503" | "drop" | "drop-after-commit"; count: number; scope?: "functions" | "export" };
const faults: Fault[] = [];
let calls = 0;
// `${table}|${key}|${version}` → times written.
const written = new Map<string, number>();

let queue: Promise<unknown> = Promise.resolve();
function serialized<T>(f: () => Promise<T>): Promise<T> {
  const run = queue.then(f, f);
  queue = run.catch(() => undefined);
  return run;
}

function send(res: ServerResponse, status: number, body: unknown) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json" });
  res.end(text);
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

function takeFault(scope: "functions" | "export"): Fault["mode"] | null {
  const i = faults.findIndex((f) => !f.scope || f.scope === scope);
  if (i < 0) return null;
  const f = faults[i];
  f.count -= 1;
  if (f.count <= 0) faults.splice(i, 1);
  return f.mode;
}

function audit(args: any, result: any) {
  if (!args || typeof args !== "object" || !Array.isArray(args.rows) || result?.duplicate) return;
  const skipped = new Set<number>(result?.skipped ?? []);
  args.rows.forEach((r: any, i: number) => {
    if (skipped.has(i) || r.version === null) return;
    const k = `${r.table}|${r.key}|${r.version}`;
    written.set(k, (written.get(k) ?? 0) + 1);
  });
}

async function callFunction(kind: "mutation" | "query", req: IncomingMessage, res: ServerResponse) {
  if (!(req.headers["content-type"] ?? "").startsWith("application/json")) {
    return send(res, 400, { code: "BadJsonBody", message: "Expected request with `Content-Type: application/json`" });
  }
  const auth = req.headers["authorization"] ?? "";
  const admin = auth.slice(0, 7).toLowerCase() === "convex " && auth.slice(7) === deployKey;
  if (auth !== "" && !admin) {
    return send(res, 401, { code: "Unauthenticated", message: "The provided deploy key is invalid" });
  }
  let body: any;
  try {
    body = JSON.parse(await readBody(req));
  } catch (e) {
    return send(res, 400, { code: "BadJsonBody", message: String(e) });
  }
  const fault = takeFault("functions");
  if (fault === "429") {
    return send(res, 429, { code: "TooManyConcurrentRequests", message: "Too many concurrent requests (injected by the test server)" });
  }
  if (fault === "503") {
    return send(res, 503, { code: "WorkerOverloaded", message: "Spread out your requests (injected by the test server)" });
  }
  if (fault === "drop") {
    req.socket.destroy();
    return;
  }
  const path: string = body.path ?? "";
  const [module, fn] = path.split(":");
  // Ferry's module has only internal functions: without the deploy key
  // they do not exist, as on a real deployment.
  if (module === "ferry" && !admin) {
    return send(res, 200, { status: "error", errorMessage: `Could not find public function for '${path}'.` });
  }
  let args: any = Array.isArray(body.args) ? body.args[0] : (body.args ?? {});
  const encoded = body.format === "convex_encoded_json" || body.format === "convex_json";
  let reply: unknown;
  try {
    args = jsonToConvex(args);
    const ref = makeFunctionReference<any>(`${module}:${fn ?? "default"}`);
    const value = await serialized(() => (kind === "mutation" ? t.mutation(ref, args) : t.query(ref, args)));
    calls += 1;
    if (kind === "mutation" && module === "ferry" && fn === "apply") audit(args, value);
    reply = { status: "success", value: encoded ? convexToJson(value as any) : clean(value) };
  } catch (e: any) {
    const data = e?.data;
    reply = {
      status: "error",
      errorMessage: `Uncaught ${e?.name ?? "Error"}: ${e?.message ?? String(e)}`,
      ...(data !== undefined ? { errorData: encoded ? convexToJson(data) : clean(data) } : {}),
    };
  }
  if (fault === "drop-after-commit") {
    // The call ran (and committed, if it succeeded); the caller never hears.
    req.socket.destroy();
    return;
  }
  send(res, 200, reply);
}

// The backend's clean `json` format: int64 as decimal strings, bytes as
// base64 strings.
function clean(value: any): any {
  if (typeof value === "bigint") return value.toString();
  if (value instanceof ArrayBuffer) return Buffer.from(value).toString("base64");
  if (Array.isArray(value)) return value.map(clean);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, clean(v)]));
  }
  if (typeof value === "number" && !Number.isFinite(value)) return String(value);
  return value;
}

async function exportRoute(req: IncomingMessage, res: ServerResponse, url: URL) {
  const auth = req.headers["authorization"] ?? "";
  if (!(auth.slice(0, 7).toLowerCase() === "convex " && auth.slice(7) === deployKey)) {
    return send(res, 401, { code: "Unauthenticated", message: "The provided deploy key is invalid" });
  }
  const fault = takeFault("export");
  if (fault === "429") {
    return send(res, 429, { code: "TooManyConcurrentRequests", message: "Too many concurrent requests (injected by the test server)" });
  }
  if (fault === "503") {
    return send(res, 503, { code: "WorkerOverloaded", message: "Spread out your requests (injected by the test server)" });
  }
  if (fault === "drop" || fault === "drop-after-commit") {
    req.socket.destroy();
    return;
  }
  const q = url.searchParams;
  const format = q.get("format") ?? "json";
  const encode = format === "convex_encoded_json" || format === "convex_json" ? (d: any) => convexToJson(d) : clean;
  try {
    // Reads see committed state only: wait for the call in progress.
    const text = await serialized(async () => {
      if (url.pathname === "/api/list_snapshot") return exportMod.listSnapshot(q, encode);
      if (url.pathname === "/api/document_deltas") return exportMod.documentDeltas(q, encode);
      return exportMod.jsonSchemas(Object.keys((schema as any).tables ?? {}));
    });
    res.writeHead(200, { "content-type": "application/json" });
    res.end(text);
  } catch (e: any) {
    if (e instanceof exportMod.HttpError) return send(res, e.status, { code: e.code, message: e.message });
    throw e;
  }
}

const server = createServer(async (req, res) => {
  try {
    const url = new URL(req.url ?? "/", "http://x");
    if (
      (req.method === "GET" || req.method === "POST") &&
      ["/api/list_snapshot", "/api/document_deltas", "/api/json_schemas"].includes(url.pathname)
    ) {
      return await exportRoute(req, res, url);
    }
    if (req.method === "POST" && url.pathname === "/test/retention") {
      exportMod.setRetention(JSON.parse(await readBody(req)));
      return send(res, 200, { ok: true });
    }
    if (req.method === "POST" && url.pathname === "/test/prune") {
      await serialized(async () => exportMod.prune());
      return send(res, 200, { ok: true });
    }
    if (req.method === "POST" && url.pathname === "/test/export") {
      exportMod.setExport(Boolean(JSON.parse(await readBody(req)).enabled));
      return send(res, 200, { ok: true });
    }
    if (req.method === "POST" && url.pathname === "/api/mutation") return await callFunction("mutation", req, res);
    if (req.method === "POST" && url.pathname === "/api/query") return await callFunction("query", req, res);
    if (req.method === "GET" && url.pathname === "/version") return send(res, 200, "ferry-convex-test-server");
    if (req.method === "POST" && url.pathname === "/test/faults") {
      const f = JSON.parse(await readBody(req)) as Fault;
      faults.push(f);
      return send(res, 200, { ok: true });
    }
    if (req.method === "GET" && url.pathname === "/test/audit") {
      const twice = [...written].filter(([, n]) => n > 1).map(([k, n]) => ({ write: k, times: n }));
      return send(res, 200, { calls, writes: written.size, twice, faultsLeft: faults.reduce((s, f) => s + f.count, 0) });
    }
    send(res, 404, { code: "NotFound", message: `no route ${req.method} ${url.pathname}` });
  } catch (e) {
    send(res, 500, { code: "InternalServerError", message: String(e) });
  }
});
// Node closes a keep-alive connection idle for `keepAliveTimeout` (5 s by
// default). Its timer runs while a long mutation blocks the event loop, so
// a client's next request, already sent on that connection, was reset when
// the loop got free. Clients here close idle connections themselves.
server.keepAliveTimeout = 120_000;
server.headersTimeout = 130_000;
server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  const addr = server.address();
  console.log(`listening ${typeof addr === "object" && addr ? addr.port : "?"}`);
});
