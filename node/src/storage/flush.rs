//! Group commit: one `fsync` serves every append and vote that is waiting for one.

use tokio::sync::{mpsc, oneshot};

type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Handle to the member's flusher task. Cloning is cheap.
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::UnboundedSender<Done>,
}

impl Flusher {
    /// Starts the flusher task for `db`. It ends when every handle is dropped.
    pub fn spawn(db: sled::Db) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Done>();
        tokio::spawn(async move {
            let mut waiting = Vec::new();
            while let Some(first) = rx.recv().await {
                waiting.push(first);
                while let Ok(more) = rx.try_recv() {
                    waiting.push(more);
                }
                // Everything written before the requests above is covered by this flush.
                let result = db
                    .flush_async()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                // In request order, so log appends are acknowledged in log order.
                for done in waiting.drain(..) {
                    done(result.clone());
                }
            }
        });
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
