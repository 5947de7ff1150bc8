//! Findings of `ferry check`: each says what was checked, whether it holds,
//! and what to do when it does not.

use std::fmt;

/// One checked prerequisite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    pub subject: String,
    /// What was found, and when `ok` is false, how to fix it.
    pub detail: String,
}

impl Finding {
    pub fn pass(subject: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            subject: subject.into(),
            detail: detail.into(),
        }
    }
    pub fn fail(subject: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            subject: subject.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {}: {}",
            if self.ok { " ok " } else { "FAIL" },
            self.subject,
            self.detail
        )
    }
}
