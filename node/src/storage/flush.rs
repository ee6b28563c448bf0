//! Group commit: one `fsync` serves every append and vote that is waiting for one.
//!
//! The flusher is a dedicated OS thread calling sled's blocking `flush`: `flush_async`
//! hands each flush to sled's thread pool, which under load costs more in thread wake-ups
//! than the flush itself.

use std::sync::mpsc;

use tokio::sync::oneshot;

type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

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
                let mut waiting = Vec::new();
                while let Ok(first) = rx.recv() {
                    waiting.push(first);
                    while let Ok(more) = rx.try_recv() {
                        waiting.push(more);
                    }
                    // Everything written before the requests above is covered by this flush.
                    let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
                    // In request order, so log appends are acknowledged in log order.
                    for done in waiting.drain(..) {
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
    pub fn flush_then(&self, done: impl FnOnce(Result<(), String>) + Send + 'static) {
        if let Err(e) = self.tx.send(Box::new(done)) {
            (e.0)(Err("flusher stopped".into()));
        }
    }

    /// Waits until everything written so far is durable.
    pub async fn flush(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.flush_then(move |r| {
            let _ = tx.send(r);
        });
        rx.await.map_err(|_| "flusher stopped".to_string())?
    }
}
