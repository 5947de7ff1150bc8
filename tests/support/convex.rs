//! The Convex test server (tests/convex-server: Ferry's real Convex module
//! running inside Convex's own `convex-test` runtime, behind Convex's HTTP
//! function API) for the end-to-end tests, and reading the target back.
//!
//! The server needs `npm ci` in tests/convex-server (tests/run.sh does it);
//! without it the tests fail, they never skip.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value as Json};

pub const DEPLOY_KEY: &str = "ferry-test|0123456789abcdef";

/// A running Convex test server, stopped on drop.
pub struct ConvexServer {
    child: Child,
    pub url: String,
    http: reqwest::Client,
}

fn server_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/convex-server")
}

impl ConvexServer {
    /// Starts the server on a free port and waits for its `listening` line.
    pub fn start() -> ConvexServer {
        Self::start_env(&[])
    }

    /// [`ConvexServer::start`] with more environment (the export's
    /// `FERRY_TEST_SNAPSHOT_PAGE`, `FERRY_TEST_RETENTION_MS`, …).
    pub fn start_env(env: &[(&str, &str)]) -> ConvexServer {
        let dir = server_dir();
        let tsx = dir.join("node_modules/tsx");
        assert!(
            tsx.exists(),
            "the Convex test server is not installed: run `npm ci` in {} (tests/run.sh does)",
            dir.display()
        );
        // One process (tsx as a loader, not its CLI, which runs the server
        // in a child that would outlive a kill).
        let mut child = Command::new("node")
            .current_dir(&dir)
            .args(["--import", "tsx", "server.ts"])
            .env("FERRY_TEST_DEPLOY_KEY", DEPLOY_KEY)
            .env("PORT", "0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the Convex test server (node)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("read the Convex test server's first line");
        let port = line
            .strip_prefix("listening ")
            .map(str::trim)
            .unwrap_or_else(|| panic!("the Convex test server did not start: {line:?}"));
        ConvexServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        }
    }

    /// The `[sink]` section for this server.
    pub fn sink_toml(&self, extra: &str) -> String {
        format!(
            "[sink]\nkind = \"convex\"\nurl = \"{}\"\ndeploy_key = \"{DEPLOY_KEY}\"\n{extra}\n",
            self.url
        )
    }

    /// Calls a query (Convex-encoded JSON both ways).
    pub async fn query(&self, path: &str, args: Json) -> Json {
        let reply: Json = self
            .http
            .post(format!("{}/api/query", self.url))
            .header("content-type", "application/json")
            .header("authorization", format!("Convex {DEPLOY_KEY}"))
            .body(json!({"path": path, "args": args, "format": "convex_encoded_json"}).to_string())
            .send()
            .await
            .expect("query the Convex test server")
            .text()
            .await
            .map(|t| serde_json::from_str(&t).expect("json"))
            .expect("read the reply");
        assert_eq!(reply["status"], "success", "{path}: {reply}");
        reply["value"].clone()
    }

    /// The table's rows as `(key text, document)`, and the number of
    /// documents in the table.
    pub async fn dump(&self, table: &str) -> (Vec<(String, Json)>, usize) {
        let v = self.query("testing:dump", json!({ "table": table })).await;
        let rows = v["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|r| {
                (
                    r["key"].as_str().expect("key").to_string(),
                    r["doc"].clone(),
                )
            })
            .collect();
        (rows, v["documents"].as_f64().unwrap_or(0.0) as usize)
    }

    /// The `[source]` section reading this server's export.
    pub fn source_toml(&self, tables: &[&str], extra: &str) -> String {
        let tables: Vec<String> = tables.iter().map(|t| format!("{t:?}")).collect();
        format!(
            "[source]\nkind = \"convex\"\nurl = \"{}\"\ndeploy_key = \"{DEPLOY_KEY}\"\ntables = [{}]\n{extra}\n",
            self.url,
            tables.join(", ")
        )
    }

    /// Writes as an application would: the ops (`{"op": "insert", "table",
    /// "doc"}`, `{"op": "patch"|"replace", "id", "doc"}`, `{"op":
    /// "delete", "id"}`, docs in Convex-encoded JSON) in one mutation;
    /// each op's document id.
    pub async fn write(&self, ops: Json) -> Vec<String> {
        let reply: Json = self
            .http
            .post(format!("{}/api/mutation", self.url))
            .header("content-type", "application/json")
            .header("authorization", format!("Convex {DEPLOY_KEY}"))
            .body(json!({"path": "testing:write", "args": {"ops": ops}, "format": "convex_encoded_json"}).to_string())
            .send()
            .await
            .expect("write to the Convex test server")
            .text()
            .await
            .map(|t| serde_json::from_str(&t).expect("json"))
            .expect("read the reply");
        assert_eq!(reply["status"], "success", "testing:write: {reply}");
        reply["value"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_str().expect("id").to_string())
            .collect()
    }

    /// Every document of `table` (Convex-encoded JSON), through the query
    /// route.
    pub async fn table(&self, table: &str) -> Vec<Json> {
        self.query("testing:table", json!({ "table": table }))
            .await
            .as_array()
            .expect("documents")
            .clone()
    }

    /// `POST /test/<route>` with `body` (retention, prune, export).
    pub async fn test_route(&self, route: &str, body: Json) {
        let status = self
            .http
            .post(format!("{}/test/{route}", self.url))
            .body(body.to_string())
            .send()
            .await
            .expect("test route")
            .status();
        assert!(status.is_success(), "/test/{route}: {status}");
    }

    /// `GET /api/<route>?<query>` with the deploy key: status and body.
    pub async fn export_get(&self, route: &str, query: &[(&str, String)]) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}/api/{route}", self.url))
            .query(query)
            .header("authorization", format!("Convex {DEPLOY_KEY}"))
            .send()
            .await
            .expect("export route");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    /// Makes the next `count` API calls fail with `mode` (`429`, `503`,
    /// `drop`, `drop-after-commit`).
    pub async fn fault(&self, mode: &str, count: u32) {
        self.http
            .post(format!("{}/test/faults", self.url))
            .body(json!({"mode": mode, "count": count}).to_string())
            .send()
            .await
            .expect("inject a fault");
    }

    /// Makes the next `count` calls of the export routes only fail with
    /// `mode` (`429`, `503`, `drop`).
    pub async fn fault_export(&self, mode: &str, count: u32) {
        self.http
            .post(format!("{}/test/faults", self.url))
            .body(json!({"mode": mode, "count": count, "scope": "export"}).to_string())
            .send()
            .await
            .expect("inject a fault");
    }

    /// The server's audit: rows written twice at one version.
    pub async fn audit(&self) -> Json {
        let t = self
            .http
            .get(format!("{}/test/audit", self.url))
            .send()
            .await
            .expect("audit")
            .text()
            .await
            .expect("audit body");
        serde_json::from_str(&t).expect("audit json")
    }
}

impl Drop for ConvexServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces a config's `[sink]` section with `sink`.
pub fn with_sink(config: &std::path::Path, sink: &str) {
    let text = std::fs::read_to_string(config).expect("read config");
    let start = text.find("[sink]").expect("a [sink] section");
    let end = text[start + 6..]
        .find("\n[")
        .map_or(text.len(), |i| start + 6 + i + 1);
    let out = format!("{}{}{}", &text[..start], sink, &text[end..]);
    std::fs::write(config, out).expect("write config");
}

/// The i64 in `{"$integer": base64}`.
pub fn int64(v: &Json) -> i64 {
    let s = v["$integer"]
        .as_str()
        .unwrap_or_else(|| panic!("not an $integer: {v}"));
    let bytes = base64(s);
    i64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

/// Standard base64 with padding.
pub fn base64(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let (mut bits, mut n, mut out) = (0u32, 0, Vec::new());
    for c in s.bytes().filter(|&c| c != b'=') {
        bits = (bits << 6) | A.iter().position(|&a| a == c).expect("base64") as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}
