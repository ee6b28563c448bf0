//! `devicegrid-operator`: `crd` prints the CustomResourceDefinition.

use clap::{Parser, Subcommand};

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
}

fn main() -> anyhow::Result<()> {
    use std::io::Write;
    match Cli::parse().command {
        Command::Crd => {
            let yaml = devicegrid_operator::crd::crd_yaml()?;
            // A closed pipe (`| head`) is not an error worth a panic.
            let _ = std::io::stdout().write_all(yaml.as_bytes());
        }
    }
    Ok(())
}
