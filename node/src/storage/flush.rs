//! Group commit: one `fsync` serves every append and vote that is waiting for one.
//!
//! The flusher is a dedicated OS thread calling sled's blocking `flush`: `flush_async`
//! hands each flush to sled's thread pool, which under load costs more in thread wake-ups
//! than the flush itself.

use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::runtime::{gather, Limits, Weight};

type Done = Box<dyn FnOnce(Result<(), FlushError>) + Send>;

/// A flush that failed: nothing written since the last good flush is known to be durable.
#[derive(Clone, Debug, thiserror::Error)]
#[error("flush: {0}")]
pub struct FlushError(String);

/// Handle to the member's flusher thread. Cloning is cheap.
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::Sender<Done>,
}

impl Flusher {
    /// Starts the flusher thread for `db`. It ends when every handle is dropped.
    pub fn spawn(db: sled::Db) -> Self {
        let (tx, rx) = mpsc::channel::<Done>();
        let spawned = std::thread::Builder::new()
            .name("sled-flusher".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let (waiting, _) = gather(
                        first,
                        || rx.try_recv().ok(),
                        |_| Weight::default(),
                        Limits::UNBOUNDED,
                    );
                    // Everything written before the requests above is covered by this flush.
                    let result = db
                        .flush()
                        .map(|_| ())
                        .map_err(|e| FlushError(e.to_string()));
                    // In request order, so log appends are acknowledged in log order.
                    for done in waiting {
                        done(result.clone());
                    }
                }
            });
        if let Err(e) = spawned {
            // Without a flusher nothing can be made durable; every request fails loudly.
            tracing::error!(error = %e, "cannot start the flusher thread");
        }
        Flusher { tx }
    }

    /// Calls `done` once everything written so far is durable. Requests are queued in call
    /// order and completed in that order.
    pub fn flush_then(&self, done: impl FnOnce(Result<(), FlushError>) + Send + 'static) {
        if let Err(e) = self.tx.send(Box::new(done)) {
            (e.0)(Err(FlushError("flusher stopped".into())));
        }
    }

    /// Waits until everything written so far is durable.
    pub async fn flush(&self) -> Result<(), FlushError> {
        let (tx, rx) = oneshot::channel();
        self.flush_then(move |r| {
            let _ = tx.send(r);
        });
        rx.await.map_err(|_| FlushError("flusher stopped".into()))?
    }
}
