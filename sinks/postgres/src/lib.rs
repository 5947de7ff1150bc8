//! PostgreSQL sink for Ferry.

pub mod literal;
