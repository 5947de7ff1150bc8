//! PostgreSQL source for Ferry.
//!
//! Owns everything that talks to the source database: the publication and
//! the pgoutput slot ([`slot`]), the catalog queries that describe tables
//! ([`catalog`]), the gap-free initial snapshot ([`snapshot`]), the pure
//! pgoutput and text-format codecs ([`pgoutput`], [`text`]) and the
//! streaming loop ([`stream`]). [`cluster`] starts throwaway local clusters
//! for the demo, the tests and the benchmark.

pub mod catalog;
pub mod cluster;
pub mod pgoutput;
pub mod text;
