//! Ferry's test kit: throwaway local PostgreSQL clusters ([`cluster`]) and a
//! payments workload ([`workload`]) for the e2e tests, `ferry demo` and `ferry-bench`.

pub mod cluster;
pub mod security;
pub mod workload;

pub use cluster::{ClusterOptions, LocalCluster};
pub use security::{AuthMethod, Security, TestPki};
