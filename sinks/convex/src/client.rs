//! The deployment's HTTP function API (`POST /api/mutation`,
//! `POST /api/query`) with the deploy key, arguments and results in
//! Convex's encoded JSON. One call, no retry: the runtime retries.

use std::time::Duration;

use ferry_pipeline::config::Secret;
use ferry_pipeline::error::PipelineError;
use serde_json::{json, Value as Json};

use crate::error;

/// Which route a function is called through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Query,
    Mutation,
}

/// A client of one deployment.
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
            // A mutation that outlives this is treated as an unknown
            // outcome and re-sent, which Ferry's module makes harmless.
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| error::transport("build the HTTP client", &e))?;
        Ok(Self {
            http,
            url: url.trim_end_matches('/').to_string(),
            deploy_key,
        })
    }

    /// Calls `path` (`module:function`) with `args`; the function's value,
    /// or the error classified (see the `error` module).
    pub async fn call(&self, kind: Kind, path: &str, args: &Json) -> Result<Json, PipelineError> {
        let route = match kind {
            Kind::Query => "query",
            Kind::Mutation => "mutation",
        };
        let body = json!({ "path": path, "args": args, "format": "convex_encoded_json" });
        let context = format!("call {path}");
        let resp = self
            .http
            .post(format!("{}/api/{route}", self.url))
            .header("content-type", "application/json")
            .header(
                "authorization",
                format!("Convex {}", self.deploy_key.expose()),
            )
            .header(
                "convex-client",
                concat!("ferry-", env!("CARGO_PKG_VERSION")),
            )
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| error::transport(&context, &e))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| error::transport(&context, &e))?;
        if status != 200 && status != 560 {
            return Err(error::status(&context, status, &text));
        }
        let reply: Json = serde_json::from_str(&text).map_err(|e| {
            error::status(&context, status, &format!("unreadable reply ({e}): {text}"))
        })?;
        match reply.get("status").and_then(Json::as_str) {
            Some("success") => Ok(reply.get("value").cloned().unwrap_or(Json::Null)),
            _ => Err(error::function(
                &context,
                reply
                    .get("errorMessage")
                    .and_then(Json::as_str)
                    .unwrap_or("the function failed without a message"),
                reply.get("errorData"),
            )),
        }
    }
}
