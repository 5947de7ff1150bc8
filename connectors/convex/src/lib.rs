//! Ferry's Convex source: the deployment's streaming export
//! (`list_snapshot`, then `document_deltas`) with a gap-free snapshot
//! handoff and a durable cursor ([`source`]), the export routes and their
//! error classes ([`client`]), and the pure codecs of Convex values
//! ([`value`]) and exported documents ([`document`]).

pub mod check;
pub mod client;
pub mod document;
pub mod source;
pub mod value;

pub use source::ConvexSource;
