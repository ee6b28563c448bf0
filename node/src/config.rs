//! A member's configuration. The binary fills it from a YAML file, environment variables
//! and flags (in rising precedence); the library only ever sees this typed value.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use devicegrid_proto::NodeId;

/// One initial member: `id=host:port` (its peer address).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seed {
    /// Member id.
    pub id: NodeId,
    /// Advertised peer `host:port`.
    pub addr: String,
}

impl std::str::FromStr for Seed {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, addr) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected id=host:port, e.g. 1=127.0.0.1:7001"))?;
        let id = id
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: member id {id:?} is not a number"))?;
        let addr = addr.trim();
        if addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(format!("{s:?}: address {addr:?} is not host:port"));
        }
        Ok(Seed {
            id,
            addr: addr.to_string(),
        })
    }
}

/// A setting that does not validate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    /// The setting (its YAML key).
    pub setting: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    fn new(setting: &'static str, message: impl Into<String>) -> Self {
        ConfigError {
            setting,
            message: message.into(),
        }
    }
}

/// Settings of one member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Stable member id (> 0).
    pub node_id: NodeId,
    /// Address the client API (HTTP) binds.
    pub listen: SocketAddr,
    /// Address clients use to reach this member's API (default: `listen`).
    pub advertise: Option<String>,
    /// Address the peer endpoint (mutual TLS, members only) binds.
    pub peer_listen: SocketAddr,
    /// Address other members use to reach this one (default: `peer_listen`).
    pub peer_advertise: Option<String>,
    /// The grid's CA certificate (PEM): peers must present a member certificate it signed.
    pub peer_ca: Option<PathBuf>,
    /// This member's certificate (PEM), naming its member id; with `peer_key`.
    pub peer_cert: Option<PathBuf>,
    /// The private key of `peer_cert` (PEM).
    pub peer_key: Option<PathBuf>,
    /// The CA's private key (PEM): instead of `peer_cert`/`peer_key`, the member issues its
    /// own certificate at start (local grids, and grids whose CA the operator made).
    pub peer_ca_key: Option<PathBuf>,
    /// Peer connections served at once; more wait in the kernel's backlog.
    pub max_peer_connections: usize,
    /// Client connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// A connection must send a complete request head within this time, and is closed
    /// after sitting idle this long (ms).
    pub header_timeout_ms: u64,
    /// Certificate (PEM) of the client port: with `tls_key`, clients speak TLS.
    pub tls_cert: Option<PathBuf>,
    /// Private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// The client port serves TLS with this member's own certificate, issued from
    /// `peer_ca_key` (clients trust `peer_ca`); instead of `tls_cert`/`tls_key`.
    pub tls_self_issued: bool,
    /// Names (DNS or IP) the self-issued certificate carries besides the advertised hosts,
    /// e.g. the client Service's name.
    pub tls_hosts: Vec<String>,
    /// CA (PEM) of client certificates: clients may present one (optional mutual TLS).
    pub tls_client_ca: Option<PathBuf>,
    /// Lifetime of the certificates the member issues for itself (seconds); a new one is
    /// issued once two thirds of it have passed, without a restart.
    pub cert_lifetime_secs: u64,
    /// Requests per second one client identity (user, or address without authentication)
    /// may make on this member; more are answered 429 `rate_limited` (0: no limit).
    pub rate_limit_per_second: u32,
    /// Requests one identity may make at once above the rate (default: one second's worth).
    pub rate_limit_burst: Option<u32>,
    /// Free space kept on the data directory's disk: below it, new writes are refused with
    /// 507 `insufficient_storage` (reads, replication and deletes go on) until space is back.
    pub min_free_disk_bytes: u64,
    /// Client requests need a bearer token of a user whose roles allow them.
    pub auth_enabled: bool,
    /// A file holding the bootstrap admin token: the grid's first user, `admin`, gets it
    /// if the grid has no user yet.
    pub auth_bootstrap_token_file: Option<PathBuf>,
    /// Where sled keeps this member's data.
    pub data_dir: PathBuf,
    /// Members that form the grid at first start. A member not listed here joins the
    /// running grid through them.
    pub initial_members: Vec<Seed>,
    /// Failure zone of this member; replicas of a partition go to distinct zones where
    /// possible.
    pub zone: Option<String>,
    /// Members that must have registered before the first bootstrap assigns partitions
    /// (default: the number of initial members).
    pub min_members: Option<u32>,
    /// A member down for this long has its replicas re-created on others (ms).
    pub failure_grace_ms: u64,
    /// Replica moves in progress at once, grid-wide.
    pub max_moves: u32,
    /// A move running longer than this is reported as stalled (ms).
    pub move_stalled_after_ms: u64,
    /// Source address of connections to other members (default: chosen by the OS), for
    /// hosts with several addresses.
    pub peer_source_ip: Option<std::net::IpAddr>,
    /// Partitions of a new grid (fixed once bootstrapped).
    pub partitions: u32,
    /// Replicas per partition (capped at the member count).
    pub replication_factor: u32,
    /// Name shared by the members of one grid.
    pub cluster_name: String,
    /// How long a request may wait for a partition leader, in milliseconds.
    pub request_timeout_ms: u64,
    /// A member that has not answered pings for this long is treated as down (ms).
    pub member_down_after_ms: u64,
    /// A group snapshots its state and drops its log after this many new entries.
    pub snapshot_after_logs: u64,
    /// Size of one Raft log segment file (bytes).
    pub log_segment_bytes: u64,
    /// Log segments kept live (besides the one being written) before the oldest is
    /// compacted: its few live entries moved forward, or the groups holding many of them
    /// snapshotted.
    pub log_max_segments: usize,
    /// Writes waiting to be proposed in one group, at most; more are refused with 503
    /// `overloaded` (nothing written) instead of buffered.
    pub max_queued_writes: usize,
    /// Bytes of writes waiting to be proposed, in all groups of the member together.
    pub max_queued_write_bytes: usize,
    /// Requests waiting to be sent to one peer on one lane, at most; more are refused.
    pub max_queued_peer_requests: usize,
    /// Bytes of requests waiting to be sent to peers, all peers and lanes together.
    pub max_queued_peer_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 7001)),
            advertise: None,
            peer_listen: SocketAddr::from(([127, 0, 0, 1], 7101)),
            peer_advertise: None,
            peer_ca: None,
            peer_cert: None,
            peer_key: None,
            peer_ca_key: None,
            max_peer_connections: 256,
            max_connections: 4096,
            header_timeout_ms: 20_000,
            tls_cert: None,
            tls_key: None,
            tls_self_issued: false,
            tls_hosts: Vec::new(),
            tls_client_ca: None,
            cert_lifetime_secs: 30 * 86_400,
            min_free_disk_bytes: 256 * 1024 * 1024,
            rate_limit_per_second: 0,
            rate_limit_burst: None,
            auth_enabled: false,
            auth_bootstrap_token_file: None,
            data_dir: PathBuf::from(".devicegrid/member-1"),
            initial_members: Vec::new(),
            zone: None,
            min_members: None,
            failure_grace_ms: 60_000,
            max_moves: 8,
            move_stalled_after_ms: 120_000,
            peer_source_ip: None,
            partitions: 271,
            replication_factor: 3,
            cluster_name: "devicegrid".into(),
            request_timeout_ms: 10_000,
            member_down_after_ms: 2_000,
            snapshot_after_logs: 10_000,
            log_segment_bytes: 64 << 20,
            log_max_segments: 4,
            max_queued_writes: 4096,
            max_queued_write_bytes: 256 * 1024 * 1024,
            max_queued_peer_requests: 16_384,
            max_queued_peer_bytes: 256 * 1024 * 1024,
        }
    }
}

impl Config {
    /// The address clients use for this member.
    pub fn advertised(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    /// The address other members use for this member.
    pub fn peer_advertised(&self) -> String {
        self.peer_advertise
            .clone()
            .unwrap_or_else(|| self.peer_listen.to_string())
    }

    /// Members that must register before bootstrap.
    pub fn bootstrap_quorum(&self) -> usize {
        self.min_members
            .map_or(self.seeds().len(), |m| m as usize)
            .max(1)
    }

    /// The initial member list, defaulting to this member alone.
    pub fn seeds(&self) -> Vec<Seed> {
        if self.initial_members.is_empty() {
            vec![Seed {
                id: self.node_id,
                addr: self.peer_advertised(),
            }]
        } else {
            self.initial_members.clone()
        }
    }

    /// Checks the settings and their relations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(ConfigError::new(
                "node_id",
                "node id must be greater than 0",
            ));
        }
        if !(1..=65_536).contains(&self.partitions) {
            return Err(ConfigError::new(
                "partitions",
                format!(
                    "partitions must be between 1 and 65536, not {}",
                    self.partitions
                ),
            ));
        }
        if !(1..=7).contains(&self.replication_factor) {
            return Err(ConfigError::new(
                "replication_factor",
                format!(
                    "replication factor must be between 1 and 7, not {}",
                    self.replication_factor
                ),
            ));
        }
        let seeds = self.seeds();
        let mut ids: Vec<_> = seeds.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) || ids.contains(&0) {
            return Err(ConfigError::new(
                "initial_members",
                "initial member ids must be distinct and greater than 0",
            ));
        }
        if !devicegrid_pki::valid_cluster(&self.cluster_name) {
            return Err(ConfigError::new(
                "cluster_name",
                "cluster_name must be 1-63 characters of a-z A-Z 0-9 . _ -",
            ));
        }
        if self.min_members == Some(0) {
            return Err(ConfigError::new(
                "min_members",
                "min_members must be at least 1",
            ));
        }
        if self.max_moves == 0 {
            return Err(ConfigError::new(
                "max_moves",
                "max_moves must be at least 1",
            ));
        }
        if self.failure_grace_ms < self.member_down_after_ms {
            return Err(ConfigError::new(
                "failure_grace_ms",
                "failure_grace_ms must be at least member_down_after_ms",
            ));
        }
        if self
            .zone
            .as_deref()
            .is_some_and(|z| z.is_empty() || z.len() > 63)
        {
            return Err(ConfigError::new("zone", "zone must be 1 to 63 characters"));
        }
        if self.member_down_after_ms < 500 {
            return Err(ConfigError::new(
                "member_down_after_ms",
                "member_down_after_ms must be at least 500",
            ));
        }
        if self.snapshot_after_logs < 10 {
            return Err(ConfigError::new(
                "snapshot_after_logs",
                "snapshot_after_logs must be at least 10",
            ));
        }
        if self.log_segment_bytes < 64 << 10 {
            return Err(ConfigError::new(
                "log_segment_bytes",
                "log_segment_bytes must be at least 65536",
            ));
        }
        if self.log_max_segments == 0 {
            return Err(ConfigError::new(
                "log_max_segments",
                "log_max_segments must be at least 1",
            ));
        }
        if self.max_queued_writes == 0 {
            return Err(ConfigError::new(
                "max_queued_writes",
                "max_queued_writes must be at least 1",
            ));
        }
        // A write is at most about 1 MiB (a value) and a peer message about 4 MiB (a
        // snapshot chunk); a budget below that would refuse them forever.
        if self.max_queued_write_bytes < 2 * 1024 * 1024 {
            return Err(ConfigError::new(
                "max_queued_write_bytes",
                "max_queued_write_bytes must be at least 2 MiB",
            ));
        }
        if self.max_queued_peer_bytes < 16 * 1024 * 1024 {
            return Err(ConfigError::new(
                "max_queued_peer_bytes",
                "max_queued_peer_bytes must be at least 16 MiB",
            ));
        }
        if self.max_queued_peer_requests < 64 {
            return Err(ConfigError::new(
                "max_queued_peer_requests",
                "max_queued_peer_requests must be at least 64",
            ));
        }
        if self.request_timeout_ms < 100 {
            return Err(ConfigError::new(
                "request_timeout_ms",
                "request_timeout_ms must be at least 100",
            ));
        }
        // Peer TLS last: the other settings get their own message even without it.
        if self.listen == self.peer_listen {
            return Err(ConfigError::new(
                "peer_listen",
                "peer_listen must differ from listen: peer traffic has its own port",
            ));
        }
        match (
            &self.peer_ca,
            &self.peer_cert,
            &self.peer_key,
            &self.peer_ca_key,
        ) {
            (None, ..) => {
                return Err(ConfigError::new(
                    "peer_ca",
                    "peer traffic is mutual TLS: set peer_ca (the grid's CA certificate) and \
                     either peer_cert and peer_key, or peer_ca_key",
                ))
            }
            (Some(_), Some(_), Some(_), None) | (Some(_), None, None, Some(_)) => {}
            _ => {
                return Err(ConfigError::new(
                    "peer_cert",
                    "set either peer_cert and peer_key (this member's certificate), or \
                     peer_ca_key (the member issues its own)",
                ))
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::new(
                "tls_cert",
                "tls_cert and tls_key go together",
            ));
        }
        if self.tls_self_issued && (self.tls_cert.is_some() || self.peer_ca_key.is_none()) {
            return Err(ConfigError::new(
                "tls_self_issued",
                "tls_self_issued serves the member's own certificate, issued from peer_ca_key: \
                 set peer_ca_key, and not tls_cert",
            ));
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() && !self.tls_self_issued {
            return Err(ConfigError::new(
                "tls_client_ca",
                "client certificates need TLS on the client port (tls_cert and tls_key, or \
                 tls_self_issued)",
            ));
        }
        if self.cert_lifetime_secs < 3 {
            return Err(ConfigError::new(
                "cert_lifetime_secs",
                "cert_lifetime_secs must be at least 3",
            ));
        }
        if self.max_connections < 8 {
            return Err(ConfigError::new(
                "max_connections",
                "max_connections must be at least 8",
            ));
        }
        if self.header_timeout_ms < 100 {
            return Err(ConfigError::new(
                "header_timeout_ms",
                "header_timeout_ms must be at least 100",
            ));
        }
        if self.max_peer_connections < 8 {
            return Err(ConfigError::new(
                "max_peer_connections",
                "max_peer_connections must be at least 8",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_and_validate() {
        let s: Seed = "2=127.0.0.1:7002".parse().expect("seed");
        assert_eq!(
            s,
            Seed {
                id: 2,
                addr: "127.0.0.1:7002".into()
            }
        );
        assert!("x=127.0.0.1:1".parse::<Seed>().is_err());
        assert!("1=localhost".parse::<Seed>().is_err());
        let mut c = Config {
            initial_members: vec![s],
            peer_ca: Some("ca.crt".into()),
            peer_ca_key: Some("ca.key".into()),
            ..Config::default()
        };
        assert_eq!(c.validate(), Ok(()), "member 1 joins through member 2");
        c.node_id = 2;
        assert_eq!(c.validate(), Ok(()));
        c.min_members = Some(0);
        assert_eq!(c.validate().map_err(|e| e.setting), Err("min_members"));
        c.min_members = Some(2);
        c.peer_cert = Some("member.crt".into());
        assert_eq!(
            c.validate().map_err(|e| e.setting),
            Err("peer_cert"),
            "a certificate and a CA key at once"
        );
        c.peer_cert = None;
        c.peer_ca = None;
        assert_eq!(c.validate().map_err(|e| e.setting), Err("peer_ca"));
        c.peer_ca = Some("ca.crt".into());
        c.peer_listen = c.listen;
        assert_eq!(c.validate().map_err(|e| e.setting), Err("peer_listen"));
        c.peer_listen = Config::default().peer_listen;
        c.cluster_name = "a b".into();
        assert_eq!(c.validate().map_err(|e| e.setting), Err("cluster_name"));
        c.cluster_name = "devicegrid".into();
        c.partitions = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn yaml_file_fills_defaults() {
        let c: Config = serde_yaml::from_str("node_id: 3\npartitions: 16\n").expect("yaml");
        assert_eq!((c.node_id, c.partitions, c.replication_factor), (3, 16, 3));
        assert!(
            serde_yaml::from_str::<Config>("nodeid: 3\n").is_err(),
            "unknown fields are refused"
        );
    }
}
