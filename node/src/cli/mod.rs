//! Command line: flags and environment become a typed [`Config`]; nothing below reads the
//! environment.

mod admin;
mod certs;
mod dev;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use devicegrid::config::{Config, Seed};
use devicegrid::metrics::Metrics;
use devicegrid::runtime::Tasks;
use devicegrid::{api, cluster::Grid};
use tokio::signal::unix::Signal;

#[derive(Parser)]
#[command(
    name = "devicegrid",
    version,
    about = "DeviceGrid: a Raft-replicated data grid for IoT device management"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "DEVICEGRID_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one member. Settings come from --config (YAML), then environment, then flags.
    Serve(Box<ServeArgs>),
    /// Run a local grid: N members, each its own process, on 127.0.0.1.
    Dev(dev::DevArgs),
    /// Make the grid's CA and member certificates for peer TLS.
    Certs(certs::CertsArgs),
    /// Manage users and roles of a grid (needs a token holding admin).
    Admin(admin::AdminArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// YAML file with any of the settings below (snake_case keys, e.g. `node_id: 1`).
    #[arg(long, env = "DEVICEGRID_CONFIG")]
    config: Option<PathBuf>,
    /// Stable member id (> 0).
    #[arg(long, env = "DEVICEGRID_NODE_ID")]
    node_id: Option<u64>,
    /// Address the client API binds [default: 127.0.0.1:7001].
    #[arg(long, env = "DEVICEGRID_LISTEN")]
    listen: Option<SocketAddr>,
    /// host:port clients use to reach this member's API [default: --listen].
    #[arg(long, env = "DEVICEGRID_ADVERTISE")]
    advertise: Option<String>,
    /// Address the peer endpoint (mutual TLS, members only) binds [default: 127.0.0.1:7101].
    #[arg(long, env = "DEVICEGRID_PEER_LISTEN")]
    peer_listen: Option<SocketAddr>,
    /// host:port other members use to reach this member [default: --peer-listen].
    #[arg(long, env = "DEVICEGRID_PEER_ADVERTISE")]
    peer_advertise: Option<String>,
    /// The grid's CA certificate (PEM); peers must present a member certificate it signed.
    #[arg(long, env = "DEVICEGRID_PEER_CA")]
    peer_ca: Option<PathBuf>,
    /// This member's certificate (PEM, naming its member id); with --peer-key.
    #[arg(long, env = "DEVICEGRID_PEER_CERT")]
    peer_cert: Option<PathBuf>,
    /// Private key of --peer-cert (PEM).
    #[arg(long, env = "DEVICEGRID_PEER_KEY")]
    peer_key: Option<PathBuf>,
    /// The CA's private key (PEM): the member issues its own certificate at start.
    #[arg(long, env = "DEVICEGRID_PEER_CA_KEY")]
    peer_ca_key: Option<PathBuf>,
    /// Client requests need a bearer token of a user allowed to make them.
    #[arg(long, env = "DEVICEGRID_AUTH_ENABLED")]
    auth_enabled: Option<bool>,
    /// File holding the bootstrap admin token: user `admin` gets it while the grid has no user.
    #[arg(long, env = "DEVICEGRID_AUTH_BOOTSTRAP_TOKEN_FILE")]
    auth_bootstrap_token_file: Option<PathBuf>,
    /// Requests per second per client identity before 429 rate_limited [default: 0, no limit].
    #[arg(long, env = "DEVICEGRID_RATE_LIMIT_PER_SECOND")]
    rate_limit_per_second: Option<u32>,
    /// Requests an identity may burst above the rate [default: the rate].
    #[arg(long, env = "DEVICEGRID_RATE_LIMIT_BURST")]
    rate_limit_burst: Option<u32>,
    /// Free disk space kept; below it writes get 507 insufficient_storage [default: 268435456].
    #[arg(long, env = "DEVICEGRID_MIN_FREE_DISK_BYTES")]
    min_free_disk_bytes: Option<u64>,
    /// Client connections served at once [default: 4096].
    #[arg(long, env = "DEVICEGRID_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Time to send a request head, and the longest idle time of a connection, ms [default: 20000].
    #[arg(long, env = "DEVICEGRID_HEADER_TIMEOUT_MS")]
    header_timeout_ms: Option<u64>,
    /// Certificate (PEM) of the client port; with --tls-key clients speak TLS.
    #[arg(long, env = "DEVICEGRID_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "DEVICEGRID_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The client port serves TLS with the member's own certificate, issued from
    /// --peer-ca-key (clients trust --peer-ca).
    #[arg(long, env = "DEVICEGRID_TLS_SELF_ISSUED")]
    tls_self_issued: Option<bool>,
    /// Names the self-issued certificate carries besides the advertised hosts: name,...
    #[arg(long, env = "DEVICEGRID_TLS_HOSTS", value_delimiter = ',')]
    tls_hosts: Option<Vec<String>>,
    /// CA (PEM) of client certificates clients may present.
    #[arg(long, env = "DEVICEGRID_TLS_CLIENT_CA")]
    tls_client_ca: Option<PathBuf>,
    /// Lifetime of self-issued certificates, s; renewed after two thirds [default: 2592000].
    #[arg(long, env = "DEVICEGRID_CERT_LIFETIME_SECS")]
    cert_lifetime_secs: Option<u64>,
    /// Peer connections served at once [default: 256].
    #[arg(long, env = "DEVICEGRID_MAX_PEER_CONNECTIONS")]
    max_peer_connections: Option<usize>,
    /// Data directory [default: .devicegrid/member-1].
    #[arg(long, env = "DEVICEGRID_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Members forming the grid at first start: id=host:port,... A member not listed joins
    /// the running grid through them.
    #[arg(long, env = "DEVICEGRID_INITIAL_MEMBERS", value_delimiter = ',')]
    initial_members: Option<Vec<Seed>>,
    /// Partitions of a new grid [default: 271].
    #[arg(long, env = "DEVICEGRID_PARTITIONS")]
    partitions: Option<u32>,
    /// Replicas per partition, capped at the member count [default: 3].
    #[arg(long, env = "DEVICEGRID_REPLICATION_FACTOR")]
    replication_factor: Option<u32>,
    /// Grid name; a data directory only serves the grid it was created for [default: devicegrid].
    #[arg(long, env = "DEVICEGRID_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// How long a request may wait for a partition leader, ms [default: 10000].
    #[arg(long, env = "DEVICEGRID_REQUEST_TIMEOUT_MS")]
    request_timeout_ms: Option<u64>,
    /// A group snapshots and drops its log after this many entries [default: 10000].
    #[arg(long, env = "DEVICEGRID_SNAPSHOT_AFTER_LOGS")]
    snapshot_after_logs: Option<u64>,
    /// Size of one Raft log segment file, bytes [default: 67108864].
    #[arg(long, env = "DEVICEGRID_LOG_SEGMENT_BYTES")]
    log_segment_bytes: Option<u64>,
    /// Live log segments before the oldest is compacted [default: 4].
    #[arg(long, env = "DEVICEGRID_LOG_MAX_SEGMENTS")]
    log_max_segments: Option<usize>,
    /// StatefulSet pod index; the member id is the index plus one (when --node-id is not
    /// given). Kubernetes sets it from the `apps.kubernetes.io/pod-index` label.
    #[arg(long, env = "DEVICEGRID_POD_INDEX")]
    pod_index: Option<u64>,
    /// Failure zone of this member (the operator passes the Kubernetes node's zone).
    #[arg(long, env = "DEVICEGRID_ZONE")]
    zone: Option<String>,
    /// Members that must register before the first bootstrap [default: initial members].
    #[arg(long, env = "DEVICEGRID_MIN_MEMBERS")]
    min_members: Option<u32>,
    /// A member down this long has its replicas re-created elsewhere, ms [default: 60000].
    #[arg(long, env = "DEVICEGRID_FAILURE_GRACE_MS")]
    failure_grace_ms: Option<u64>,
    /// Replica moves in progress at once, grid-wide [default: 8].
    #[arg(long, env = "DEVICEGRID_MAX_MOVES")]
    max_moves: Option<u32>,
    /// A move running longer than this is reported as stalled, ms [default: 120000].
    #[arg(long, env = "DEVICEGRID_MOVE_STALLED_AFTER_MS")]
    move_stalled_after_ms: Option<u64>,
    /// Source address of connections to other members [default: chosen by the OS].
    #[arg(long, env = "DEVICEGRID_PEER_SOURCE_IP")]
    peer_source_ip: Option<std::net::IpAddr>,
    /// A member not answering pings this long is down, ms [default: 2000].
    #[arg(long, env = "DEVICEGRID_MEMBER_DOWN_AFTER_MS")]
    member_down_after_ms: Option<u64>,
    /// Writes waiting in one group before more are refused with 503 overloaded [default: 4096].
    #[arg(long, env = "DEVICEGRID_MAX_QUEUED_WRITES")]
    max_queued_writes: Option<usize>,
    /// Bytes of writes waiting in all groups before more are refused [default: 268435456].
    #[arg(long, env = "DEVICEGRID_MAX_QUEUED_WRITE_BYTES")]
    max_queued_write_bytes: Option<usize>,
    /// Requests waiting for one peer and lane before more are refused [default: 16384].
    #[arg(long, env = "DEVICEGRID_MAX_QUEUED_PEER_REQUESTS")]
    max_queued_peer_requests: Option<usize>,
    /// Bytes of requests waiting for all peers before more are refused [default: 268435456].
    #[arg(long, env = "DEVICEGRID_MAX_QUEUED_PEER_BYTES")]
    max_queued_peer_bytes: Option<usize>,
    /// Stop (SIGTERM) when the process with this pid, our parent, exits. Set by `dev`.
    #[arg(long, hide = true)]
    parent_pid: Option<u32>,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                serde_yaml::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?
            }
            None => Config::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(
            node_id,
            listen,
            peer_listen,
            max_peer_connections,
            max_connections,
            min_free_disk_bytes,
            header_timeout_ms,
            rate_limit_per_second,
            auth_enabled,
            tls_self_issued,
            tls_hosts,
            cert_lifetime_secs,
            data_dir,
            initial_members,
            partitions,
            replication_factor,
            cluster_name,
            request_timeout_ms,
            snapshot_after_logs,
            log_segment_bytes,
            log_max_segments,
            failure_grace_ms,
            max_moves,
            move_stalled_after_ms,
            member_down_after_ms,
            max_queued_writes,
            max_queued_write_bytes,
            max_queued_peer_requests,
            max_queued_peer_bytes
        );
        macro_rules! set_opt {
            ($($f:ident),*) => { $( if self.$f.is_some() { c.$f = self.$f; } )* };
        }
        set_opt!(
            advertise,
            peer_advertise,
            peer_ca,
            peer_cert,
            peer_key,
            peer_ca_key,
            auth_bootstrap_token_file,
            tls_cert,
            tls_key,
            tls_client_ca,
            rate_limit_burst,
            zone,
            min_members,
            peer_source_ip
        );
        if let (None, Some(i)) = (self.node_id, self.pod_index) {
            c.node_id = i + 1;
        }
        c.validate()?;
        Ok(c)
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // openraft::replication logs every failed RPC to a stopped peer (thousands a minute);
        // the liveness loop logs the peer's state changes instead.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "info,openraft=error,openraft::replication=off,sled=warn",
            )
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => {
                if let Some(pid) = args.parent_pid {
                    exit_with_parent(pid)?;
                }
                serve(args.into_config()?).await
            }
            Command::Dev(args) => dev::run(args).await,
            Command::Certs(args) => certs::run(args),
            Command::Admin(args) => admin::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let peer_listener = tokio::net::TcpListener::bind(config.peer_listen)
        .await
        .with_context(|| format!("binding {}", config.peer_listen))?;
    let grid = Grid::start(config, Arc::new(Metrics::new()), Tasks::new()).await?;
    tracing::info!(
        member = grid.id,
        addr = %grid.config.advertised(),
        peer_addr = %grid.config.peer_advertised(),
        "member started"
    );
    // The server belongs to the member's task tree: stopping the member ends it gracefully.
    let server = grid.clone();
    grid.tasks().spawn_to_end(async move {
        if let Err(e) = api::serve(server.clone(), listener, peer_listener).await {
            tracing::error!(error = %e, "serving");
            server.tasks().cancel();
        }
    });
    tokio::select! {
        _ = wait_for_signal() => {}
        _ = grid.tasks().token().cancelled() => {}
    }
    tracing::info!("stopping");
    // A stop is bounded: whatever has not wound down by then is cut off. Every write the
    // member acknowledged is already on disk, so exiting early loses nothing.
    match grid.stop(STOP_GRACE).await {
        0 => tracing::info!("stopped"),
        left => {
            tracing::warn!(grace = ?STOP_GRACE, left, "tasks still running after the grace period; exiting")
        }
    }
    Ok(())
}

/// How long a member may take to stop cleanly.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Asks the kernel for SIGTERM when the parent exits, so members of a `dev` grid never
/// outlive their supervisor, even when it is killed.
fn exit_with_parent(parent: u32) -> anyhow::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
        .context("prctl(PR_SET_PDEATHSIG)")?;
    // The parent may have exited before the request took effect.
    if nix::unistd::getppid().as_raw() as u32 != parent {
        anyhow::bail!("parent process {parent} is gone");
    }
    Ok(())
}

/// SIGINT and SIGTERM, caught from the moment this is made (a signal that arrives before
/// anyone waits is kept, not lost).
pub(crate) struct Signals(Option<(Signal, Signal)>);

impl Signals {
    /// Starts catching the signals now.
    pub(crate) fn catch() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Signals(Some((term, int))),
            _ => Signals(None),
        }
    }

    /// Waits for the next one.
    pub(crate) async fn recv(&mut self) {
        match &mut self.0 {
            Some((term, int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            // Without signal handlers the process can only be killed; keep serving.
            None => std::future::pending::<()>().await,
        }
    }
}

/// Waits for SIGINT or SIGTERM.
pub(crate) async fn wait_for_signal() {
    Signals::catch().recv().await
}
