//! End-to-end tests against real PostgreSQL clusters (and, for the MongoDB
//! source, a MongoDB-wire-protocol server) started by the tests themselves
//! (see tests/support). One test binary, so that cargo builds and links it
//! once.

#![allow(unreachable_pub)]

mod support;

mod basic;
mod cli;
mod convex;
mod crash;
mod dlq;
mod kafka;
mod kafka_bus;
mod mongo;
mod schema;
mod snapshot;
mod transform;
mod transform_pg;
mod types;
