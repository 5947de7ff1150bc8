//! A Confluent Schema Registry client: the two calls Ferry needs, register
//! a writer schema under `<topic>-value` (TopicNameStrategy) and fetch a
//! schema by id. `ureq` (blocking, plain HTTP) runs on the blocking pool;
//! schemas are registered once per table shape and fetched once per id.

use std::time::Duration;

use crate::error::{ErrorClass, PipelineError, Stage};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        // Non-2xx answers are read and classified below.
        .http_status_as_error(false)
        .build()
        .into()
}

/// HTTP status → error class: 429 and 5xx are transient, other 4xx fatal
/// (a registry that refuses a schema will refuse it again).
fn status_class(status: u16) -> ErrorClass {
    match status {
        429 | 500..=599 => ErrorClass::Transient,
        _ => ErrorClass::Fatal,
    }
}

fn call(
    stage: Stage,
    what: String,
    req: impl FnOnce(&ureq::Agent) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<serde_json::Value, PipelineError> {
    let mut resp = req(&agent()).map_err(|e| {
        PipelineError::transient(stage, format!("{what}: schema registry unreachable: {e}"))
    })?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    if !(200..300).contains(&status) {
        return Err(PipelineError::new(
            status_class(status),
            stage,
            format!("{what}: schema registry answered {status}: {body}"),
        )
        .with_code(status.to_string()));
    }
    serde_json::from_str(&body).map_err(|e| {
        PipelineError::fatal(stage, format!("{what}: unreadable registry answer: {e}"))
    })
}

/// Registers `schema` under `<topic>-value` and returns its id (the same id
/// for a schema registered before).
pub async fn register(base: &str, topic: &str, schema: &str) -> Result<u32, PipelineError> {
    let url = format!(
        "{}/subjects/{topic}-value/versions",
        base.trim_end_matches('/')
    );
    let body = serde_json::json!({ "schema": schema }).to_string();
    let what = format!("register the schema of {topic}");
    let v = tokio::task::spawn_blocking(move || {
        call(Stage::Source, what, |a| {
            a.post(&url)
                .header("Content-Type", "application/vnd.schemaregistry.v1+json")
                .send(body.as_str())
        })
    })
    .await
    .map_err(|e| PipelineError::fatal(Stage::Source, format!("registry client: {e}")))??;
    v.get("id")
        .and_then(serde_json::Value::as_u64)
        .and_then(|id| u32::try_from(id).ok())
        .ok_or_else(|| {
            PipelineError::fatal(Stage::Source, format!("registry answer without an id: {v}"))
        })
}

/// The schema registered with `id`.
pub async fn fetch(base: &str, id: u32) -> Result<String, PipelineError> {
    let url = format!("{}/schemas/ids/{id}", base.trim_end_matches('/'));
    let what = format!("fetch schema {id}");
    let v = tokio::task::spawn_blocking(move || call(Stage::Decode, what, |a| a.get(&url).call()))
        .await
        .map_err(|e| PipelineError::fatal(Stage::Decode, format!("registry client: {e}")))??;
    v.get("schema")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            PipelineError::fatal(
                Stage::Decode,
                format!("registry answer without a schema: {v}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry that stores what it is given (tiny_http), enough to check
    /// the requests and answers' shapes.
    fn fake_registry() -> (String, std::thread::JoinHandle<()>) {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", server.server_addr().to_ip().unwrap());
        let h = std::thread::spawn(move || {
            let mut schemas: Vec<String> = Vec::new();
            for _ in 0..4 {
                let Ok(mut req) = server.recv() else { return };
                let mut body = String::new();
                req.as_reader().read_to_string(&mut body).unwrap();
                let url = req.url().to_string();
                let (status, answer) = if url == "/subjects/ferry.public.t-value/versions" {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let s = v["schema"].as_str().unwrap().to_string();
                    let id = match schemas.iter().position(|x| *x == s) {
                        Some(i) => i,
                        None => {
                            schemas.push(s);
                            schemas.len() - 1
                        }
                    };
                    (200, serde_json::json!({"id": id + 1}).to_string())
                } else if let Some(id) = url.strip_prefix("/schemas/ids/") {
                    let id: usize = id.parse().unwrap();
                    match schemas.get(id - 1) {
                        Some(s) => (200, serde_json::json!({"schema": s}).to_string()),
                        None => (
                            404,
                            r#"{"error_code":40403,"message":"Schema not found"}"#.to_string(),
                        ),
                    }
                } else {
                    (404, "{}".to_string())
                };
                let _ =
                    req.respond(tiny_http::Response::from_string(answer).with_status_code(status));
            }
        });
        (addr, h)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn register_and_fetch() {
        let (url, h) = fake_registry();
        let schema = r#"{"type":"record","name":"x","fields":[]}"#;
        let id = register(&url, "ferry.public.t", schema).await.unwrap();
        assert_eq!(register(&url, "ferry.public.t", schema).await.unwrap(), id);
        assert_eq!(fetch(&url, id).await.unwrap(), schema);
        let e = fetch(&url, 99).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Fatal);
        assert_eq!(e.code.as_deref(), Some("404"));
        h.join().unwrap();
    }

    #[tokio::test]
    async fn unreachable_registry_is_transient() {
        let e = fetch("http://127.0.0.1:9", 1).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Transient);
    }
}
