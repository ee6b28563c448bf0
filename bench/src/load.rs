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
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Successful requests.
    pub ops: u64,
    /// Failed requests.
    pub errors: u64,
    /// Wall time of the cell.
    pub elapsed: Duration,
    /// Latency of successful requests at p50, p99 and p99.9, microseconds.
    pub percentiles: [u64; 3],
    /// CPU seconds the system's members used during the cell, when measured.
    pub cpu_secs: Option<f64>,
}

impl Outcome {
    /// The outcome of `hist` (latencies of successful requests, microseconds).
    pub fn of(hist: &Histogram<u64>, errors: u64, elapsed: Duration) -> Self {
        Outcome {
            ops: hist.len(),
            errors,
            elapsed,
            percentiles: [50.0, 99.0, 99.9].map(|q| hist.value_at_quantile(q / 100.0)),
            cpu_secs: None,
        }
    }

    /// Successful operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency percentile in microseconds: `q` is 50, 99 or 99.9.
    pub fn p(&self, q: f64) -> u64 {
        match q {
            q if q <= 50.0 => self.percentiles[0],
            q if q <= 99.0 => self.percentiles[1],
            _ => self.percentiles[2],
        }
    }

    /// CPU seconds of the members per 1,000 successful operations, when measured.
    pub fn cpu_per_1000(&self) -> Option<f64> {
        let cpu = self.cpu_secs?;
        (self.ops > 0).then(|| cpu * 1000.0 / self.ops as f64)
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
    Outcome::of(&hist, errors.load(Ordering::Relaxed), start.elapsed())
}
