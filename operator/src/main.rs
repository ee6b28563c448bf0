//! `devicegrid-operator`: `crd` prints the CustomResourceDefinition; `run` runs the
//! controller against the cluster named by KUBECONFIG (or the in-cluster service account).

use std::time::Duration;

use clap::{Parser, Subcommand};
use devicegrid_operator::reconciler::{self, Context, GridApi};

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
    Run {
        /// Watch grids in this namespace only (default: all namespaces).
        #[arg(long, env = "DEVICEGRID_OPERATOR_NAMESPACE")]
        namespace: Option<String>,
        /// How the operator reaches a grid's admin API; `{name}` and `{namespace}` are
        /// replaced.
        #[arg(
            long,
            env = "DEVICEGRID_OPERATOR_GRID_URL",
            default_value = "http://{name}.{namespace}.svc:7001"
        )]
        grid_url: String,
        /// A drain without progress for this long is reported as stalled, seconds.
        #[arg(long, default_value_t = 600)]
        drain_stall_secs: u64,
        /// Log format.
        #[arg(long, default_value = "json", value_parser = ["text", "json"])]
        log_format: String,
    },
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
        Command::Run {
            namespace,
            grid_url,
            drain_stall_secs,
            log_format,
        } => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
            let logs = tracing_subscriber::fmt().with_env_filter(filter);
            if log_format == "json" {
                logs.json().init();
            } else {
                logs.init();
            }
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let client = kube::Client::try_default().await?;
                let ctx = Context::new(
                    client,
                    GridApi::new(grid_url),
                    Duration::from_secs(drain_stall_secs),
                );
                tracing::info!(namespace = ?namespace, "devicegrid-operator running");
                reconciler::run(ctx, namespace).await;
                anyhow::Ok(())
            })
        }
    }
}
