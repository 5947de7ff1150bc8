//! The deployment's streaming export routes (`GET /api/list_snapshot`,
//! `/api/document_deltas`, `/api/json_schemas`) with the deploy key, and
//! the one place an HTTP outcome is classified: one request, no retry (the
//! source retries with backoff).
//!
//! | outcome | class |
//! |---|---|
//! | connection refused/dropped, timeout, 408, 429, 5xx | transient (retried) |
//! | 400 `InvalidWindowToReadDocuments`, `SnapshotTooOld` | code [`EXPIRED`]: the source decides (stop or copy again) |
//! | 403 `StreamingExportNotEnabled` | fatal, a configuration error saying so |
//! | 401, 403, other 4xx | fatal, with Convex's code and message |

use std::time::Duration;

use ferry_pipeline::config::Secret;
use ferry_pipeline::error::{ErrorClass, PipelineError, Stage};
use serde::Deserialize;
use serde_json::Value as Json;

/// The code of an error that means the stored cursor (or snapshot) is older
/// than the deployment keeps its change log.
pub const EXPIRED: &str = "convex-cursor-expired";

/// A page of `list_snapshot`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotPage {
    pub values: Vec<Json>,
    pub snapshot: i64,
    pub cursor: Option<String>,
    pub has_more: bool,
}

/// A page of `document_deltas`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeltasPage {
    pub values: Vec<Json>,
    pub cursor: i64,
    pub has_more: bool,
}

/// A client of one deployment's export routes.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    deploy_key: Secret,
}

impl Client {
    /// `url` is the deployment's URL; no request is made yet.
    pub fn new(url: &str, deploy_key: Secret) -> Result<Self, PipelineError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| transport("build the HTTP client", &e))?;
        Ok(Self {
            http,
            url: url.trim_end_matches('/').to_string(),
            deploy_key,
        })
    }

    async fn get(&self, route: &str, query: &[(&str, String)]) -> Result<String, PipelineError> {
        let context = format!("GET /api/{route}");
        let resp = self
            .http
            .get(format!("{}/api/{route}", self.url))
            .query(query)
            .header(
                "authorization",
                format!("Convex {}", self.deploy_key.expose()),
            )
            .header(
                "convex-client",
                concat!("ferry-", env!("CARGO_PKG_VERSION")),
            )
            .send()
            .await
            .map_err(|e| transport(&context, &e))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| transport(&context, &e))?;
        if status != 200 {
            return Err(status_error(&context, status, &text));
        }
        Ok(text)
    }

    /// One page of the snapshot of `table` in `component`: the first when
    /// `snapshot` is `None`, then at that timestamp from `cursor`.
    pub async fn list_snapshot(
        &self,
        component: &str,
        table: Option<&str>,
        snapshot: Option<i64>,
        cursor: Option<&str>,
    ) -> Result<SnapshotPage, PipelineError> {
        let mut q = vec![("format", "convex_encoded_json".to_string())];
        if let Some(t) = table {
            q.push(("tableName", t.to_string()));
            if !component.is_empty() {
                q.push(("component", component.to_string()));
            }
        }
        if let Some(s) = snapshot {
            q.push(("snapshot", s.to_string()));
        }
        if let Some(c) = cursor {
            q.push(("cursor", c.to_string()));
        }
        let text = self.get("list_snapshot", &q).await?;
        parse(&text, "list_snapshot")
    }

    /// The changes committed after `cursor` (exclusive), whole timestamps.
    pub async fn document_deltas(
        &self,
        component: &str,
        cursor: i64,
    ) -> Result<DeltasPage, PipelineError> {
        let mut q = vec![
            ("format", "convex_encoded_json".to_string()),
            ("cursor", cursor.to_string()),
        ];
        if !component.is_empty() {
            q.push(("component", component.to_string()));
        }
        let text = self.get("document_deltas", &q).await?;
        parse(&text, "document_deltas")
    }

    /// Each table's JSON Schema, by component (`{component: {table:
    /// schema}}`).
    pub async fn json_schemas(&self) -> Result<Json, PipelineError> {
        let text = self
            .get(
                "json_schemas",
                &[
                    ("format", "convex_encoded_json".to_string()),
                    ("byComponent", "true".to_string()),
                ],
            )
            .await?;
        parse(&text, "json_schemas")
    }

    /// The user tables of `component` that `json_schemas` lists, sorted.
    pub async fn tables(&self, component: &str) -> Result<Vec<String>, PipelineError> {
        let schemas = self.json_schemas().await?;
        // `byComponent` nests by component; a deployment that ignores it
        // answers `{table: schema}` for the root.
        let top = schemas.as_object().cloned().unwrap_or_default();
        let map = match top.get(component) {
            Some(Json::Object(m)) if !m.contains_key("type") => m.clone(),
            _ if component.is_empty() => top,
            _ => Default::default(),
        };
        let mut names: Vec<String> = map
            .keys()
            .filter(|t| !t.starts_with('_'))
            .cloned()
            .collect();
        names.sort();
        Ok(names)
    }
}

fn parse<T: serde::de::DeserializeOwned>(text: &str, route: &str) -> Result<T, PipelineError> {
    serde_json::from_str(text).map_err(|e| {
        PipelineError::transient(
            Stage::Source,
            format!("unreadable {route} reply from Convex: {e}"),
        )
    })
}

/// A request that got no HTTP answer: retried.
fn transport(context: &str, e: &reqwest::Error) -> PipelineError {
    // reqwest's Display names the URL, which holds no secret (the key is
    // a header).
    PipelineError::transient(Stage::Source, format!("{context}: {e}"))
}

/// An HTTP answer other than 200, classified (see the module table).
pub fn status_error(context: &str, status: u16, body: &str) -> PipelineError {
    let parsed: Option<Json> = serde_json::from_str(body).ok();
    let code = parsed
        .as_ref()
        .and_then(|j| j.get("code"))
        .and_then(Json::as_str)
        .unwrap_or("")
        .to_string();
    let message = parsed
        .as_ref()
        .and_then(|j| j.get("message"))
        .and_then(Json::as_str)
        .map_or_else(|| body.chars().take(300).collect(), str::to_string);
    let text = format!("{context}: HTTP {status} {code}: {message}");
    match (status, code.as_str()) {
        (400, "InvalidWindowToReadDocuments" | "SnapshotTooOld") => {
            PipelineError::fatal(Stage::Source, text).with_code(EXPIRED)
        }
        (403, "StreamingExportNotEnabled") => PipelineError::fatal(
            Stage::Source,
            format!(
                "{text}. Streaming export is not enabled on this deployment: enable it (a paid plan \
                 on Convex Cloud; on by default self-hosted), or check source.url"
            ),
        )
        .with_code(code),
        (401 | 403, _) => PipelineError::fatal(
            Stage::Source,
            format!("{text}. Check source.deploy_key (it needs deployment:data:view)"),
        )
        .with_code(code),
        (408 | 425 | 429, _) | (500..=599, _) => {
            PipelineError::new(ErrorClass::Transient, Stage::Source, text).with_code(code)
        }
        _ => PipelineError::fatal(Stage::Source, text).with_code(code),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_pipeline::error::Disposition;

    #[test]
    fn statuses_are_classified() {
        let e = status_error(
            "x",
            429,
            r#"{"code":"TooManyConcurrentRequests","message":"m"}"#,
        );
        assert_eq!(e.disposition(), Disposition::Retry);
        assert_eq!(
            status_error("x", 503, "oops").disposition(),
            Disposition::Retry
        );
        let e = status_error(
            "x",
            400,
            r#"{"code":"InvalidWindowToReadDocuments","message":"old"}"#,
        );
        assert_eq!(e.code.as_deref(), Some(EXPIRED));
        let e = status_error(
            "x",
            403,
            r#"{"code":"StreamingExportNotEnabled","message":"plan"}"#,
        );
        assert_eq!(e.disposition(), Disposition::Halt);
        assert!(e.message.contains("not enabled"), "{}", e.message);
        assert_eq!(
            status_error("x", 401, "{}").disposition(),
            Disposition::Halt
        );
    }
}
