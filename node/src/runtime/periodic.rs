//! The one periodic loop: `while every.tick().await { ... }` runs a round per period until
//! the member stops.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// A ticker bound to a cancellation token. A round that overruns delays the next one
/// instead of bunching ticks up.
pub struct Every {
    interval: Interval,
    token: CancellationToken,
}

impl Every {
    /// Ticks every `period` (the first at once) until `token` is cancelled.
    pub fn new(period: Duration, token: CancellationToken) -> Self {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Every { interval, token }
    }

    /// Waits for the next tick; `false` once cancelled.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.token.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }

    /// Runs one round, abandoned if cancelled meanwhile (`None`).
    pub async fn round<T>(&self, round: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            _ = self.token.cancelled() => None,
            r = round => Some(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ticks_until_cancelled_and_abandons_a_round() {
        let token = CancellationToken::new();
        let mut every = Every::new(Duration::from_millis(10), token.clone());
        let mut n = 0;
        while every.tick().await {
            n += 1;
            if n == 3 {
                token.cancel();
            }
        }
        assert_eq!(n, 3);
        assert_eq!(every.round(std::future::pending::<()>()).await, None);
    }
}
