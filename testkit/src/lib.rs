//! # Test scaffolding
//!
//! What the member's cluster tests, the operator's API-server tests and the end-to-end suite
//! share, so each is written once:
//!
//! - [`until`]: polls a condition with a deadline (tests never sleep bare)
//! - [`free_ports`], [`free_run`]: loopback ports that are free right now

#![deny(missing_docs)]

use std::future::Future;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// Polls `check` every `every` until it returns `Ok(value)` or `timeout` passes. `Err(seen)`
/// means "not yet" and says what was observed; on timeout the last observation is returned
/// as the error.
pub async fn until<T, F, Fut>(timeout: Duration, every: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match check().await {
            Ok(v) => return Ok(v),
            Err(seen) => seen,
        };
        if Instant::now() > deadline {
            return Err(seen);
        }
        tokio::time::sleep(every).await;
    }
}

/// `n` distinct free loopback ports (bound together, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .filter_map(|_| TcpListener::bind("127.0.0.1:0").ok())
        .collect();
    assert_eq!(listeners.len(), n, "cannot bind {n} loopback ports");
    listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.port())
        .collect()
}

/// Peer ports of `devicegrid dev` are its client ports plus this.
pub const DEV_PEER_PORT_OFFSET: u16 = 100;

/// The first of `n` consecutive free loopback ports whose run [`DEV_PEER_PORT_OFFSET`]
/// higher is free too (for `devicegrid dev --base-port`: client and peer ports).
pub fn free_run(n: u16) -> u16 {
    for _ in 0..200 {
        let base = free_ports(1)[0];
        if base > 60_000 {
            continue;
        }
        let held: Vec<_> = (0..n)
            .flat_map(|i| [base + i, base + DEV_PEER_PORT_OFFSET + i])
            .filter_map(|p| TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == 2 * n as usize {
            return base;
        }
    }
    panic!("no run of {n} free ports");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn until_returns_the_value_or_the_last_observation() {
        let mut n = 0;
        let got = until(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            let n = n;
            async move {
                if n >= 3 {
                    Ok(n)
                } else {
                    Err(format!("n={n}"))
                }
            }
        })
        .await;
        assert_eq!(got, Ok(3));
        let timed_out: Result<(), String> = until(
            Duration::from_millis(20),
            Duration::from_millis(5),
            || async { Err("never".to_string()) },
        )
        .await;
        assert_eq!(timed_out, Err("never".into()));
    }

    #[test]
    fn ports_are_distinct_and_runs_consecutive() {
        let p = free_ports(4);
        let mut q = p.clone();
        q.sort_unstable();
        q.dedup();
        assert_eq!(q.len(), 4);
        let base = free_run(3);
        assert!(base > 0 && base <= 60_000);
    }
}
