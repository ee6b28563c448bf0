//! `devicegrid-operator`: `crd` prints the CustomResourceDefinition; `run` runs the
//! controller against the cluster named by KUBECONFIG (or the in-cluster service account).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgAction, Args, Parser, Subcommand};
use devicegrid_operator::controller::{self, Context};
use devicegrid_operator::grid_api::GridApi;
use devicegrid_operator::leader::{self, LeaseConfig};
use devicegrid_operator::metrics::{self, Metrics};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "devicegrid-operator",
    version,
    about = "Kubernetes operator for DeviceGrid"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the DeviceGrid CustomResourceDefinition (YAML).
    Crd,
    /// Reconcile DeviceGrids until SIGINT or SIGTERM.
    Run(Box<Run>),
}

#[derive(Args)]
struct Run {
    /// Watch grids in these namespaces only (comma-separated; default: all namespaces).
    #[arg(
        long = "namespace",
        env = "DEVICEGRID_OPERATOR_NAMESPACES",
        value_delimiter = ','
    )]
    namespaces: Vec<String>,
    /// How the operator reaches a grid's admin API; `{name}` and `{namespace}` are replaced.
    #[arg(
        long,
        env = "DEVICEGRID_OPERATOR_GRID_URL",
        default_value = "http://{name}.{namespace}.svc:7001"
    )]
    grid_url: String,
    /// A drain without progress for this long is reported as stalled, seconds.
    #[arg(long, default_value_t = 600)]
    drain_stall_secs: u64,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    #[arg(
        long,
        env = "DEVICEGRID_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    metrics_addr: SocketAddr,
    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `debug,kube=info`).
    #[arg(
        long,
        env = "DEVICEGRID_OPERATOR_LOG",
        default_value = "info,kube=warn"
    )]
    log_level: String,
    /// Log format.
    #[arg(long, default_value = "json", value_parser = ["text", "json"])]
    log_format: String,
    /// Reconcile only while holding the leader Lease (needed with more than one replica).
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    leader_election: bool,
    /// Namespace of the leader Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "devicegrid-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (default: the pod name, else host and pid).
    #[arg(long, env = "POD_NAME")]
    lease_identity: Option<String>,
    /// How long the Lease stays valid after its last renewal, seconds.
    #[arg(long, default_value_t = 15)]
    lease_duration_secs: u64,
    /// How long before expiry the holder renews, seconds.
    #[arg(long, default_value_t = 5)]
    lease_renew_grace_secs: u64,
}

fn main() -> anyhow::Result<()> {
    use std::io::Write;
    match Cli::parse().command {
        Command::Crd => {
            let yaml = devicegrid_operator::crd::crd_yaml()?;
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::stdout().write_all(yaml.as_bytes());
            Ok(())
        }
        Command::Run(run) => {
            let filter = tracing_subscriber::EnvFilter::try_new(&run.log_level)
                .with_context(|| format!("--log-level {:?}", run.log_level))?;
            let logs = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
            if run.log_format == "json" {
                logs.json().init();
            } else {
                logs.init();
            }
            tokio::runtime::Runtime::new()?.block_on(serve(*run))
        }
    }
}

async fn serve(run: Run) -> anyhow::Result<()> {
    let lease = LeaseConfig {
        namespace: run.lease_namespace,
        name: run.lease_name,
        identity: run.lease_identity.unwrap_or_else(default_identity),
        duration: Duration::from_secs(run.lease_duration_secs),
        grace: Duration::from_secs(run.lease_renew_grace_secs),
    };
    if run.leader_election {
        lease.validate()?;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let metrics = Arc::new(Metrics::new());
    let endpoint = metrics::serve(run.metrics_addr, metrics.clone(), shutdown.clone())
        .await
        .with_context(|| format!("binding --metrics-addr {}", run.metrics_addr))?;
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (KUBECONFIG or the in-cluster service account)")?;
    client
        .apiserver_version()
        .await
        .context("reaching the Kubernetes API server")?;
    metrics.set_ready();
    let ctx = Context::new(
        client.clone(),
        GridApi::new(run.grid_url),
        Duration::from_secs(run.drain_stall_secs),
        metrics.clone(),
    );
    tracing::info!(namespaces = ?run.namespaces, "devicegrid-operator running");
    let controllers = controller::run(ctx, run.namespaces, shutdown.clone());
    let outcome = if run.leader_election {
        leader::while_leading(client, &lease, metrics, shutdown.clone(), controllers).await
    } else {
        metrics.set_leader(true);
        controllers.await;
        Ok(())
    };
    shutdown.cancel();
    let _ = endpoint.await;
    outcome?;
    tracing::info!("devicegrid-operator stopped");
    Ok(())
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "devicegrid-operator".to_string()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
