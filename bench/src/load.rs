//! Closed-loop load: `clients` tasks each issue one request at a time for a fixed duration.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;

use crate::systems::System;

/// A benchmarked operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Linearizable read of one key.
    Get,
    /// Write of one key.
    Put,
    /// Atomic update of a device shadow's reported state.
    Shadow,
}

impl FromStr for Op {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "get" => Ok(Op::Get),
            "put" => Ok(Op::Put),
            "shadow" => Ok(Op::Shadow),
            _ => Err(format!("unknown op {s:?} (get, put, shadow)")),
        }
    }
}

/// What one cell measured.
pub struct Outcome {
    /// Latencies of successful requests, microseconds.
    pub hist: Histogram<u64>,
    /// Failed requests.
    pub errors: u64,
    /// Wall time of the cell.
    pub elapsed: Duration,
}

impl Outcome {
    /// Successful operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.hist.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Latency percentile in microseconds.
    pub fn p(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q / 100.0)
    }

    /// One line for progress output.
    pub fn summary(&self) -> String {
        format!(
            "{:.0} ops/s p50 {} us p99 {} us p999 {} us errors {}",
            self.ops_per_sec(),
            self.p(50.0),
            self.p(99.0),
            self.p(99.9),
            self.errors
        )
    }
}

/// Runs one cell.
pub async fn run(
    system: &System,
    op: Op,
    clients: usize,
    keys: usize,
    value_size: usize,
    duration: Duration,
) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let outcome = run_until(system, op, clients, keys, value_size, stop).await;
    timer.abort();
    outcome
}

/// Runs load until `stop` is set.
pub async fn run_until(
    system: &System,
    op: Op,
    clients: usize,
    keys: usize,
    value_size: usize,
    stop: Arc<AtomicBool>,
) -> Outcome {
    let start = Instant::now();
    let errors = Arc::new(AtomicU64::new(0));
    let tasks = (0..clients).map(|c| {
        let system = system.clone();
        let errors = errors.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = rand::thread_rng().gen_range(0..keys);
                seq += 1;
                let t = Instant::now();
                let ok = match op {
                    Op::Get => system.get(key).await,
                    Op::Put => system.put(key, value_size, seq).await,
                    Op::Shadow => system.shadow(key, c as u64, seq).await,
                };
                match ok {
                    Ok(()) => {
                        let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("   error: {e:#}");
                        }
                    }
                }
            }
            hist
        })
    });
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    for h in futures::future::join_all(tasks).await.into_iter().flatten() {
        let _ = hist.add(h);
    }
    Outcome {
        hist,
        errors: errors.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    }
}
