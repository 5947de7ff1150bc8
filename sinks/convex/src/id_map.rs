//! The id map in the deployment (`ferry_ids`, written by `ferry:apply` with
//! the rows): `ferry idmap lookup` reads it through `ferry:idLookup`.

/// A legacy id and the Convex id it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPair {
    pub legacy: String,
    pub new: String,
}
