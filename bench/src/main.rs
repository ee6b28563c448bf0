//! # dgbench
//!
//! Starts a local 3-member DeviceGrid (`devicegrid dev`), then a 3-member etcd, then a
//! 3-member Hazelcast on loopback, drives each with the same keys, value sizes and client
//! counts (DeviceGrid and etcd over their HTTP/JSON APIs, Hazelcast through its smart
//! client), and prints the throughput and latency of each, the ratios, the CPU seconds the
//! members used per 1,000 operations, and their idle CPU.
//!
//! `--scenario rebalance` instead grows a loaded 3-member grid to 5 under client load and
//! reports the time to balance and the latencies during the move.
//!
//! - [`systems`]: how each operation is expressed for DeviceGrid and for etcd
//! - [`hazelcast`]: Hazelcast members and its Java load generator (bench/hazelcast)
//! - [`load`]: the closed-loop load generator
//! - [`procs`]: starting and stopping the systems, CPU and memory readings
//! - [`rebalance`]: the rebalance scenario

mod hazelcast;
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

/// Benchmark DeviceGrid against etcd and Hazelcast.
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
    /// The systems DeviceGrid is compared with.
    #[arg(long, value_delimiter = ',', default_value = "etcd,hazelcast", value_parser = ["etcd", "hazelcast"])]
    peers: Vec<String>,
    /// Builds the Hazelcast members and load generator and prints their classpath.
    #[arg(long, default_value = "scripts/hazelcast-bench.sh")]
    hazelcast_build: PathBuf,
    /// First port of the Hazelcast members.
    #[arg(long, default_value_t = 27501)]
    hazelcast_port: u16,
    /// Load an already running DeviceGrid at these URLs instead (no peers, no table).
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

    let mut measured = Vec::new();
    eprintln!("== DeviceGrid: 3 members");
    let grid = procs::Grid::start(
        &args.devicegrid,
        &args.out.join("devicegrid"),
        args.grid_port,
    )
    .await?;
    let dg = System::devicegrid(grid.urls(), http.clone());
    let result = measure(&args, Driver::Http(&dg), || grid.usage()).await;
    grid.stop().await;
    measured.push(("DeviceGrid", result?));

    if args.peers.iter().any(|p| p == "etcd") {
        eprintln!("== etcd: 3 members");
        let etcd_dir = args.out.join("etcd");
        let etcd = procs::Etcd::start(&args.etcd_cluster, &etcd_dir, args.etcd_port).await?;
        let et = System::etcd(etcd.urls(), http.clone());
        let result = measure(&args, Driver::Http(&et), || etcd.usage()).await;
        etcd.stop().await;
        measured.push(("etcd", result?));
    }

    if args.peers.iter().any(|p| p == "hazelcast") {
        eprintln!("== Hazelcast: 3 members");
        let built = tokio::process::Command::new(&args.hazelcast_build)
            .stderr(std::process::Stdio::inherit())
            .output()
            .await
            .with_context(|| format!("running {}", args.hazelcast_build.display()))?;
        if !built.status.success() {
            anyhow::bail!(
                "{} failed: {}",
                args.hazelcast_build.display(),
                built.status
            );
        }
        let classpath = String::from_utf8(built.stdout)?.trim().to_string();
        let hz = hazelcast::Hazelcast::start(
            &classpath,
            &args.out.join("hazelcast"),
            args.hazelcast_port,
        )
        .await?;
        let result = measure(&args, Driver::Hazelcast(&hz), || hz.usage()).await;
        hz.stop().await;
        measured.push(("Hazelcast", result?));
    }

    let table = report(&args, &measured);
    println!("{table}");
    std::fs::write(args.out.join("results.md"), &table)?;
    Ok(())
}

/// How cells are run against one system.
enum Driver<'a> {
    /// DeviceGrid or etcd, by the Rust load generator over HTTP.
    Http(&'a System),
    /// Hazelcast, by its Java load generator.
    Hazelcast(&'a hazelcast::Hazelcast),
}

impl Driver<'_> {
    async fn preload(&self, keys: usize, value_size: usize) -> anyhow::Result<()> {
        match self {
            Driver::Http(s) => s.preload(keys, value_size).await,
            Driver::Hazelcast(h) => h.preload(keys, value_size).await,
        }
    }

    async fn cell(&self, args: &Args, op: Op, clients: usize) -> anyhow::Result<Outcome> {
        let d = Duration::from_secs(args.duration);
        match self {
            Driver::Http(s) => Ok(load::run(s, op, clients, args.keys, args.value_size, d).await),
            Driver::Hazelcast(h) => h.cell(op, clients, args.keys, args.value_size, d).await,
        }
    }
}

async fn measure(
    args: &Args,
    system: Driver<'_>,
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
            let before = usage()?;
            let mut outcome = system.cell(args, *op, *clients).await?;
            outcome.cpu_secs = Some(usage()?.since(&before).cpu.iter().sum());
            eprintln!("   {op:?} x{clients}: {}", outcome.summary());
            results.push((*op, *clients, outcome));
        }
    }
    Ok(Measured { idle, results })
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

/// The table of every system's cells, the ratios of DeviceGrid (first) to each other system
/// and the CPU per 1,000 operations, and the idle readings.
fn report(args: &Args, systems: &[(&str, Measured)]) -> String {
    let mut t = String::new();
    t.push_str(&format!(
        "keys {}, values {} B, {} s per cell, clients pick a random member per request \
         (Hazelcast: its smart client sends to the key's owner); latencies in ms\n\n",
        args.keys, args.value_size, args.duration
    ));
    let row = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
    let mut head = vec!["op".to_string(), "clients".to_string()];
    for (name, _) in systems {
        head.extend([
            format!("{name} ops/s"),
            "p50".into(),
            "p99".into(),
            "p999".into(),
        ]);
    }
    t.push_str(&row(head.clone()));
    t.push_str(&row(head.iter().map(|_| "---:".to_string()).collect()));
    let Some((_, first)) = systems.first() else {
        return t;
    };
    for (i, (op, c, _)) in first.results.iter().enumerate() {
        let mut cells = vec![format!("{op:?}"), c.to_string()];
        for (_, m) in systems {
            let o = &m.results[i].2;
            cells.push(format!("{:.0}", o.ops_per_sec()));
            cells.extend([50.0, 99.0, 99.9].map(|q| ms(o.p(q))));
            if o.errors > 0 {
                let last = cells.len() - 1;
                cells[last].push_str(&format!(" ({} errors)", o.errors));
            }
        }
        t.push_str(&row(cells));
    }

    t.push('\n');
    let mut head = vec!["op".to_string(), "clients".to_string()];
    for (name, _) in &systems[1..] {
        head.extend([format!("throughput DG/{name}"), format!("p99 DG/{name}")]);
    }
    for (name, _) in systems {
        head.push(format!("CPU s per 1,000 ops {name}"));
    }
    t.push_str(&row(head.clone()));
    t.push_str(&row(head.iter().map(|_| "---:".to_string()).collect()));
    for (i, (op, c, d)) in first.results.iter().enumerate() {
        let mut cells = vec![format!("{op:?}"), c.to_string()];
        for (_, m) in &systems[1..] {
            let o = &m.results[i].2;
            cells.push(ratio(d.ops_per_sec(), o.ops_per_sec()));
            cells.push(ratio(d.p(99.0) as f64, o.p(99.0) as f64));
        }
        for (_, m) in systems {
            let cpu = m.results[i].2.cpu_per_1000();
            cells.push(cpu.map_or_else(|| "-".into(), |c| format!("{c:.3}")));
        }
        t.push_str(&row(cells));
    }

    t.push_str(&format!("\nIdle ({} s, 3 members each):\n", args.idle));
    for (name, m) in systems {
        t.push_str(&format!("- {name}: {}\n", m.idle.describe(args.idle)));
    }
    t
}
