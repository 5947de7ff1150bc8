//! MongoDB errors → Ferry's error classes, in one place: driver errors at
//! the boundary ([`mongo_err`]) and the write errors a command reports
//! ([`write_error_class`]).

use ferry_pipeline::error::{ErrorClass, PipelineError, Stage};
use mongodb::error::{Error, ErrorKind, WriteFailure};

/// Server codes that say "this record cannot be written", whatever the
/// retry: duplicate key, document too large, bad field names or values,
/// conflicting paths (`a` and `a.b` in one `$set`), immutable `_id`.
const PERMANENT_CODES: &[i32] = &[
    2,     // BadValue
    9,     // FailedToParse
    14,    // TypeMismatch
    28,    // PathNotViable
    40,    // ConflictingUpdateOperators
    52,    // DollarPrefixedFieldName
    56,    // EmptyFieldName
    57,    // DottedFieldName
    66,    // ImmutableField
    10334, // BSONObjectTooLarge
    11000, // DuplicateKey
    17419, // document too large for an update
    17280, // key too large to index
];

/// Codes that stop the pipeline: authentication and authorization.
const FATAL_CODES: &[i32] = &[13, 18, 8000];

/// The class of a write error a command reported by code.
pub(crate) fn write_error_class(code: i32) -> ErrorClass {
    if PERMANENT_CODES.contains(&code) {
        ErrorClass::Permanent
    } else if FATAL_CODES.contains(&code) {
        ErrorClass::Fatal
    } else {
        // WriteConflict (112), NotWritablePrimary, and anything unknown:
        // retried with backoff, never dropped.
        ErrorClass::Transient
    }
}

/// A driver error as a [`PipelineError`] saying what was being done.
/// Never includes the URL (the driver's messages name hosts only).
pub(crate) fn mongo_err(what: &str, e: Error) -> PipelineError {
    let (class, code) = match &*e.kind {
        ErrorKind::Authentication { .. } | ErrorKind::InvalidTlsConfig { .. } => {
            (ErrorClass::Fatal, None)
        }
        ErrorKind::InvalidArgument { .. } | ErrorKind::SessionsNotSupported => {
            (ErrorClass::Fatal, None)
        }
        ErrorKind::Command(c) => (write_error_class(c.code), Some(c.code)),
        ErrorKind::Write(WriteFailure::WriteError(w)) => (write_error_class(w.code), Some(w.code)),
        _ => (ErrorClass::Transient, None),
    };
    // A transaction the server aborted under us (write conflict, failover)
    // is safe to run again.
    let class = if e.contains_label("TransientTransactionError") {
        ErrorClass::Transient
    } else {
        class
    };
    let err = PipelineError::new(class, Stage::Sink, format!("{what}: {e}"));
    match code {
        Some(c) => err.with_code(c.to_string()),
        None => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_permanent_conflicts_transient() {
        assert_eq!(write_error_class(11000), ErrorClass::Permanent);
        assert_eq!(write_error_class(112), ErrorClass::Transient);
        assert_eq!(write_error_class(13), ErrorClass::Fatal);
        assert_eq!(write_error_class(424242), ErrorClass::Transient);
    }
}
