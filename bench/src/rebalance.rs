//! The rebalance scenario: a 3-member grid loaded with `--devices` values of `--value-size`
//! bytes grows to 5 members (`devicegrid dev add --count 2`) while clients read and write;
//! reports the time until the grid is balanced again and the latencies clients saw before
//! and during the move.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use devicegrid_proto::views::ClusterView;
use tokio::process::Command;

use crate::load::{self, Op, Outcome};
use crate::procs;
use crate::systems::System;

/// What the scenario measured.
struct Phase {
    gets: Outcome,
    puts: Outcome,
}

/// Readers and writers (half each of `clients`) until `stop`.
async fn phase(
    dg: &System,
    clients: usize,
    keys: usize,
    size: usize,
    stop: Arc<AtomicBool>,
) -> Phase {
    let half = (clients / 2).max(1);
    let (gets, puts) = tokio::join!(
        load::run_until(dg, Op::Get, half, keys, size, stop.clone()),
        load::run_until(dg, Op::Put, half, keys, size, stop),
    );
    Phase { gets, puts }
}

fn stop_after(d: Duration) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(d).await;
        s.store(true, Ordering::Relaxed);
    });
    stop
}

fn disk_usage(dir: &Path) -> u64 {
    walk(dir).unwrap_or(0)
}

fn walk(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            walk(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Runs the scenario and returns the report (markdown).
pub async fn run(
    devicegrid: &Path,
    out: &Path,
    port: u16,
    devices: usize,
    size: usize,
    clients: usize,
    http: reqwest::Client,
) -> anyhow::Result<String> {
    let dir = out.join("rebalance");
    eprintln!("== DeviceGrid: 3 members, {devices} devices of {size} B");
    let grid = procs::Grid::start(devicegrid, &dir, port).await?;
    let dg = System::devicegrid(grid.urls(), http);
    let t = Instant::now();
    dg.preload(devices, size).await?;
    let load_time = t.elapsed();
    eprintln!(
        "   loaded in {load_time:.1?}; disk {} MiB",
        disk_usage(&dir) >> 20
    );

    eprintln!("   baseline: {clients} clients for 20 s");
    let before = phase(
        &dg,
        clients,
        devices,
        size,
        stop_after(Duration::from_secs(20)),
    )
    .await;

    eprintln!("   adding 2 members");
    let stop = Arc::new(AtomicBool::new(false));
    let during = {
        let (dg, stop) = (dg.clone(), stop.clone());
        tokio::spawn(async move { phase(&dg, clients, devices, size, stop).await })
    };
    let log = std::fs::File::create(out.join("rebalance-add.log"))?;
    let t = Instant::now();
    let status = Command::new(devicegrid)
        .args(["dev", "add", "--count", "2", "--timeout", "7200"])
        .arg("--data-dir")
        .arg(&dir)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .status()
        .await
        .context("running devicegrid dev add")?;
    let rebalance = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let during = during.await?;
    let view: ClusterView = reqwest::get(format!("http://127.0.0.1:{port}/v1/cluster"))
        .await?
        .json()
        .await?;
    let disk = disk_usage(&dir);
    grid.stop().await;
    if !status.success() {
        bail!(
            "dev add failed ({status}); see {}",
            out.join("rebalance-add.log").display()
        );
    }
    eprintln!("   balanced after {rebalance:.1?}");

    let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
    let row = |name: &str, o: &Outcome| {
        format!(
            "| {name} | {:.0} | {} | {} | {} | {} |\n",
            o.ops_per_sec(),
            ms(o.p(50.0)),
            ms(o.p(99.0)),
            ms(o.p(99.9)),
            o.errors
        )
    };
    let mut t = String::new();
    t.push_str(&format!(
        "{devices} devices of {size} B loaded in {:.0} s ({:.0} devices/s, batches of 500); \
         3 -> 5 members balanced after {:.1} s ({} moves); data on disk after: {} MiB\n\n",
        load_time.as_secs_f64(),
        devices as f64 / load_time.as_secs_f64(),
        rebalance.as_secs_f64(),
        view.balance.moves_finished,
        disk >> 20
    ));
    t.push_str(&format!(
        "{clients} clients (half get, half put of random devices) through the 3 original members; latencies in ms\n\n"
    ));
    t.push_str("| phase | ops/s | p50 | p99 | p999 | errors |\n| --- | ---: | ---: | ---: | ---: | ---: |\n");
    t.push_str(&row("get, before (20 s)", &before.gets));
    t.push_str(&row("get, during the move", &during.gets));
    t.push_str(&row("put, before (20 s)", &before.puts));
    t.push_str(&row("put, during the move", &during.puts));
    let ratio = |a: &Outcome, b: &Outcome| a.p(99.0) as f64 / b.p(99.0).max(1) as f64;
    t.push_str(&format!(
        "\np99 during / before: get {:.2}, put {:.2}\n",
        ratio(&during.gets, &before.gets),
        ratio(&during.puts, &before.puts)
    ));
    Ok(t)
}
