//! Member-to-member traffic: every Raft RPC of every group, liveness pings and forwarded
//! client operations share one endpoint per member (`POST /internal/v1/peer` on the peer
//! port), spoken only over mutual TLS between members of the grid ([`tls`], [`server`]).
//!
//! Requests to one member are coalesced: whatever is queued when a send starts travels in
//! one MessagePack batch, so a sweep of heartbeats for hundreds of groups costs one HTTP
//! request per peer. Lanes keep slow traffic from delaying urgent traffic: control (pings,
//! votes, heartbeats, status), Raft appends, client (forwarded reads and writes, which wait
//! for commit) and bulk (snapshot chunks). Batches are capped in bytes, and a request whose
//! caller stopped waiting is dropped instead of sent. Answers come back one by one as each
//! is ready ([`frames`]), so a write waiting for its commit holds only its own caller.
//!
//! | module | job |
//! | --- | --- |
//! | [`client`] | the sending side: lanes, batches, the TLS client |
//! | [`frames`] | the answers of a batch, framed one by one |
//! | [`server`] | the HTTP server of both ports: connection cap, handshakes, header timeout, the caller's member id |
//! | [`tls`] | certificates of both ends, the member verifier |

pub mod client;
pub mod frames;
pub mod server;
pub mod tls;

pub use client::{Lane, Transport, TransportError};
pub use devicegrid_proto::peer::{PeerRequest, PeerResponse, RaftRpc, WireError, PEER_PATH};
pub use server::{Admission, Conn, Limits};
pub use tls::{MemberCert, PeerTls, TlsFiles};
