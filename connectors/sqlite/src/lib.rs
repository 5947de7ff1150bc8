//! Ferry's SQLite source: a consistent snapshot in key order ([`snapshot`]),
//! then a trigger-fed change log read in sequence order ([`change_log`]).

pub mod catalog;
pub mod change_log;
pub mod check;
pub mod config;
pub mod report;
pub mod snapshot;
pub mod source;
pub mod value;

pub use source::SqliteSource;
