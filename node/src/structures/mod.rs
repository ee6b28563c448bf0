//! Replicated data structures: the deterministic logic the state machines apply.
//!
//! Nothing here talks to Raft or the network. Each operation reads and writes through an
//! [`Overlay`](crate::storage::Overlay) of its group, and every input that could differ
//! between replicas (the clock) travels inside the Raft entry. The types they take and
//! return are the wire contract's (`devicegrid_proto::entries`, `devicegrid_proto::maps`).
//!
//! - [`map`], [`processor`], [`shadow`]: what a partition applies
//! - [`check`]: the input rules of map operations, shared by the API and the peer server
//! - [`meta`]: what the metadata group applies (members, partition table, moves); users
//!   and roles in [`auth`], which also decides what a user may do
//! - [`placement`]: where replicas go, as pure rules over the metadata state

pub mod auth;
pub mod check;
pub mod map;
pub mod meta;
pub mod placement;
pub mod processor;
pub mod shadow;
