//! The one place a failed call of the deployment becomes a
//! [`PipelineError`], classified by what the HTTP API says:
//!
//! | what came back | class | why |
//! |---|---|---|
//! | no answer (connect, timeout, dropped connection) | transient | the outcome is unknown; the call is re-sent, and Ferry's module makes a re-sent call change nothing |
//! | 408, 425, 429, 5xx (OCC, overload, too many requests) | transient | the backend asks to retry with backoff |
//! | 401, 403 | fatal | the deploy key is wrong or lacks rights |
//! | other 4xx | fatal | a request Ferry built wrong: retrying cannot help |
//! | `status: "error"`, code `ferry-stale-offsets` | fatal, that code | the Kafka worker rejoins (see [`ferry_pipeline::checkpoint::STALE_OFFSETS`]) |
//! | `status: "error"`, "Could not find … function" | fatal | Ferry's module is not deployed (docs/convex.md) |
//! | `status: "error"`, anything else | permanent | the function threw on the data (a schema validator, a document limit): the batch is written record by record and the record that fails is parked |

use ferry_pipeline::checkpoint::STALE_OFFSETS;
use ferry_pipeline::error::{ErrorClass, PipelineError, Stage};

/// A transport failure: no HTTP status.
pub(crate) fn transport(context: &str, e: &reqwest::Error) -> PipelineError {
    // reqwest's Display names the URL but never headers: the deploy key
    // stays out of the message.
    PipelineError::transient(Stage::Sink, format!("{context}: {e}")).with_code("http")
}

/// An HTTP status other than 200/560 with its body (`{code, message}`).
pub(crate) fn status(context: &str, status: u16, body: &str) -> PipelineError {
    let class = match status {
        408 | 425 | 429 | 500..=599 => ErrorClass::Transient,
        401 | 403 => ErrorClass::Fatal,
        _ => ErrorClass::Fatal,
    };
    let body: String = body.chars().take(500).collect();
    PipelineError::new(
        class,
        Stage::Sink,
        format!("{context}: HTTP {status}: {body}"),
    )
    .with_code(status.to_string())
}

/// A function that ran and threw (`"status": "error"`).
pub(crate) fn function(
    context: &str,
    message: &str,
    data: Option<&serde_json::Value>,
) -> PipelineError {
    let code = data
        .and_then(|d| d.get("code"))
        .and_then(|c| c.as_str())
        .map(str::to_string);
    let class = if code.as_deref() == Some(STALE_OFFSETS)
        || message.contains("Could not find public function")
        || message.contains("Could not find function")
    {
        ErrorClass::Fatal
    } else {
        ErrorClass::Permanent
    };
    let e = PipelineError::new(class, Stage::Sink, format!("{context}: {message}"));
    match code {
        Some(c) => e.with_code(c),
        None => e.with_code("convex-function-error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_pipeline::error::Disposition;

    #[test]
    fn statuses_map_to_dispositions() {
        for s in [408, 429, 500, 503] {
            assert_eq!(status("c", s, "").disposition(), Disposition::Retry, "{s}");
        }
        for s in [400, 401, 403, 404] {
            assert_eq!(status("c", s, "").disposition(), Disposition::Halt, "{s}");
        }
        let stale = serde_json::json!({"code": STALE_OFFSETS});
        let e = function("c", "Uncaught ConvexError", Some(&stale));
        assert_eq!(e.code.as_deref(), Some(STALE_OFFSETS));
        assert_eq!(
            function("c", "Validator error", None).disposition(),
            Disposition::DeadLetter
        );
        assert_eq!(
            function(
                "c",
                "Could not find public function for 'ferry:apply'.",
                None
            )
            .disposition(),
            Disposition::Halt
        );
    }
}
