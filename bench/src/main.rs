//! # dgbench
//!
//! Starts a local 3-member DeviceGrid (`devicegrid dev`) and a 3-member etcd on loopback,
//! drives both with the same keys, value sizes and client counts over their HTTP/JSON APIs,
//! and prints one table with throughput, latency percentiles, idle CPU and the ratios.
//!
//! `--scenario rebalance` instead grows a loaded 3-member grid to 5 under client load and
//! reports the time to balance and the latencies during the move.
//!
//! - [`systems`]: how each operation is expressed for DeviceGrid and for etcd
//! - [`load`]: the closed-loop load generator
//! - [`procs`]: starting and stopping the systems, CPU and memory readings
//! - [`rebalance`]: the rebalance scenario

mod load;
mod procs;
mod rebalance;
mod systems;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use load::{Op, Outcome};
use systems::System;

/// Benchmark DeviceGrid against etcd.
#[derive(Parser, Debug)]
struct Args {
    /// The devicegrid binary (release build).
    #[arg(long, default_value = "target/release/devicegrid")]
    devicegrid: PathBuf,
    /// The etcd cluster script.
    #[arg(long, default_value = "scripts/etcd-cluster.sh")]
    etcd_cluster: PathBuf,
    /// Working directory for data and logs (emptied first).
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of idle time over which CPU is sampled.
    #[arg(long, default_value_t = 30)]
    idle: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Size of each value, bytes.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Client counts.
    #[arg(long, value_delimiter = ',', default_value = "1,16,128")]
    clients: Vec<usize>,
    /// Operations.
    #[arg(long, value_delimiter = ',', default_value = "get,put,shadow")]
    ops: Vec<Op>,
    /// First client port of the DeviceGrid members (their peer ports are 100 higher).
    #[arg(long, default_value_t = 27001)]
    grid_port: u16,
    /// First client port of the etcd members.
    #[arg(long, default_value_t = 27301)]
    etcd_port: u16,
    /// Load an already running DeviceGrid at these URLs instead (no etcd, no table).
    #[arg(long, value_delimiter = ',')]
    grid_urls: Vec<String>,
    /// `compare` (DeviceGrid against etcd) or `rebalance` (3 -> 5 members under load).
    #[arg(long, default_value = "compare", value_parser = ["compare", "rebalance"])]
    scenario: String,
    /// Devices loaded before the rebalance.
    #[arg(long, default_value_t = 1_000_000)]
    devices: usize,
    /// Clients during the rebalance.
    #[arg(long, default_value_t = 16)]
    move_clients: usize,
}

struct Measured {
    idle: procs::Usage,
    results: Vec<(Op, usize, Outcome)>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.out.exists() {
        std::fs::remove_dir_all(&args.out)
            .with_context(|| format!("emptying {}", args.out.display()))?;
    }
    std::fs::create_dir_all(&args.out)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()?;

    if args.scenario == "rebalance" {
        let report = rebalance::run(
            &args.devicegrid,
            &args.out,
            args.grid_port,
            args.devices,
            args.value_size,
            args.move_clients,
            http,
        )
        .await?;
        println!("{report}");
        std::fs::write(args.out.join("rebalance.md"), &report)?;
        return Ok(());
    }

    if !args.grid_urls.is_empty() {
        let dg = System::devicegrid(args.grid_urls.clone(), http.clone());
        dg.preload(args.keys, args.value_size).await?;
        for op in &args.ops {
            for clients in &args.clients {
                let d = Duration::from_secs(args.duration);
                let outcome = load::run(&dg, *op, *clients, args.keys, args.value_size, d).await;
                println!("{op:?} x{clients}: {}", outcome.summary());
            }
        }
        return Ok(());
    }

    eprintln!("== DeviceGrid: 3 members");
    let grid = procs::Grid::start(
        &args.devicegrid,
        &args.out.join("devicegrid"),
        args.grid_port,
    )
    .await?;
    let dg = System::devicegrid(grid.urls(), http.clone());
    let dg_result = measure(&args, &dg, || grid.usage()).await;
    grid.stop().await;
    let dg_result = dg_result?;

    eprintln!("== etcd: 3 members");
    let etcd_dir = args.out.join("etcd");
    let etcd = procs::Etcd::start(&args.etcd_cluster, &etcd_dir, args.etcd_port).await?;
    let et = System::etcd(etcd.urls(), http.clone());
    let et_result = measure(&args, &et, || etcd.usage()).await;
    etcd.stop().await;
    let et_result = et_result?;

    let table = report(&args, &dg_result, &et_result);
    println!("{table}");
    std::fs::write(args.out.join("results.md"), &table)?;
    Ok(())
}

async fn measure(
    args: &Args,
    system: &System,
    usage: impl Fn() -> anyhow::Result<procs::Usage>,
) -> anyhow::Result<Measured> {
    system.preload(args.keys, args.value_size).await?;
    eprintln!("   idle for {} s", args.idle);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = usage()?;
    tokio::time::sleep(Duration::from_secs(args.idle)).await;
    let idle = usage()?.since(&before);
    let mut results = Vec::new();
    for op in &args.ops {
        for clients in &args.clients {
            let outcome = load::run(
                system,
                *op,
                *clients,
                args.keys,
                args.value_size,
                Duration::from_secs(args.duration),
            )
            .await;
            eprintln!("   {op:?} x{clients}: {}", outcome.summary());
            results.push((*op, *clients, outcome));
        }
    }
    Ok(Measured { idle, results })
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn report(args: &Args, dg: &Measured, et: &Measured) -> String {
    let mut t = String::new();
    t.push_str(&format!(
        "keys {}, values {} B, {} s per cell, clients pick a random member per request; latencies in ms\n\n",
        args.keys, args.value_size, args.duration
    ));
    t.push_str("| op | clients | DeviceGrid ops/s | p50 | p99 | p999 | etcd ops/s | p50 | p99 | p999 | throughput DG/etcd | p99 DG/etcd |\n");
    t.push_str(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for ((op, c, d), (_, _, e)) in dg.results.iter().zip(&et.results) {
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}", a / b)
            } else {
                "-".into()
            }
        };
        t.push_str(&format!(
            "| {op:?} | {c} | {:.0} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |\n",
            d.ops_per_sec(),
            ms(d.p(50.0)),
            ms(d.p(99.0)),
            ms(d.p(99.9)),
            e.ops_per_sec(),
            ms(e.p(50.0)),
            ms(e.p(99.0)),
            ms(e.p(99.9)),
            ratio(d.ops_per_sec(), e.ops_per_sec()),
            ratio(d.p(99.0) as f64, e.p(99.0) as f64),
        ));
        if d.errors + e.errors > 0 {
            t.push_str(&format!(
                "|  | errors | {} |  |  |  | {} |  |  |  |  |  |\n",
                d.errors, e.errors
            ));
        }
    }
    t.push_str(&format!(
        "\nIdle ({} s, 3 members each): DeviceGrid {} ; etcd {}\n",
        args.idle,
        dg.idle.describe(args.idle),
        et.idle.describe(args.idle)
    ));
    t
}
