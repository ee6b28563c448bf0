//! Waiting on conditions with deadlines.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::diag::Diag;

/// Polls `check` every second until it returns `Ok(value)` or `timeout` passes. `Err(seen)`
/// means "not yet" and says what was observed; the timeout error carries the last
/// observation and the diagnostics.
pub async fn until<T, F, Fut>(diag: &Diag, timeout: Duration, what: &str, check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    match devicegrid_testkit::until(timeout, Duration::from_secs(1), check).await {
        Ok(v) => {
            eprintln!(
                "e2e: {what}: after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(v)
        }
        Err(last) => bail!(
            "timed out after {timeout:?} waiting for {what}\nlast observed: {last}{}",
            diag.report().await
        ),
    }
}

/// Adds the diagnostics to a failed step's error.
pub async fn step<T>(diag: &Diag, what: &str, result: Result<T>) -> Result<T> {
    match result {
        Ok(v) => Ok(v),
        Err(e) => bail!("{what}: {e:#}{}", diag.report().await),
    }
}

/// Checks the order a watched step saw (`seen`, or why it went wrong) against `expected`.
pub async fn in_order<T: PartialEq + std::fmt::Debug>(
    diag: &Diag,
    what: &str,
    seen: Result<Vec<T>, String>,
    expected: &[T],
) -> Result<()> {
    let order = step(diag, what, seen.map_err(anyhow::Error::msg)).await?;
    if order != expected {
        bail!("{what}: the order was {order:?}, expected {expected:?}");
    }
    Ok(())
}
