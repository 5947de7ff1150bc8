//! End-to-end tests against real PostgreSQL clusters (and, for the MongoDB
//! source, a MongoDB-wire-protocol server) started by the tests themselves
//! (see tests/support). One test binary, so that cargo builds and links it
//! once.

#![allow(unreachable_pub)]

mod support;

mod basic;
mod cli;
mod convex;
mod convex_source;
mod crash;
mod dlq;
mod kafka;
mod kafka_bus;
mod kafka_partitions;
mod metrics_endpoint;
mod mongo;
mod mongo_sink;
mod mongo_srv;
mod mongo_tls;
mod operator;
mod pg_security;
mod rollback;
mod schema;
mod snapshot;
mod sqlite;
mod status;
mod transform;
mod transform_pg;
mod types;
mod verify;
