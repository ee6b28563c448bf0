//! The member's task tree (as in mini-redis: a shutdown signal every task watches, and a
//! way to wait until all of them are done).

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A cancellation token and the tracker of every task spawned under it. Cloning shares
/// both; [`Tasks::child`] shares the tracker under a child token.
#[derive(Clone, Default)]
pub struct Tasks {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    /// A new root.
    pub fn new() -> Self {
        Tasks::default()
    }

    /// A branch: cancelled with this one (or alone, by [`Tasks::cancel`]), its tasks
    /// counted in the same tracker, so the root's [`Tasks::stop`] waits for them too.
    pub fn child(&self) -> Tasks {
        Tasks {
            token: self.token.child_token(),
            tracker: self.tracker.clone(),
        }
    }

    /// The token tasks watch.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Whether stop was asked.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Runs `task` until it ends or this branch is cancelled, whichever comes first.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Runs `task` to its end, even past cancellation (for tasks that watch the token
    /// themselves and must finish cleanly, such as the HTTP server's graceful shutdown).
    pub fn spawn_to_end<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Cancels this branch (and its children) without waiting.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Cancels and waits until every task of the tracker has ended, or `grace` passed;
    /// returns how many were still running then (0: all stopped).
    pub async fn stop(&self, grace: Duration) -> usize {
        self.token.cancel();
        self.tracker.close();
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }

    /// Tasks still running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_cancels_and_waits_for_children() {
        let root = Tasks::new();
        let child = root.child();
        for t in [&root, &child] {
            t.spawn(std::future::pending());
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let watched = child.token().clone();
        root.spawn_to_end(async move {
            watched.cancelled().await;
            let _ = tx.send(());
        });
        assert_eq!(root.running(), 3);
        assert_eq!(root.stop(Duration::from_secs(5)).await, 0);
        assert!(rx.await.is_ok(), "the child token was cancelled");
        assert_eq!(root.running(), 0);
    }

    #[tokio::test]
    async fn a_cancelled_child_leaves_the_root_running() {
        let root = Tasks::new();
        let child = root.child();
        child.spawn(std::future::pending());
        root.spawn(std::future::pending());
        child.cancel();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while root.running() != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "child task never ended"
            );
            tokio::task::yield_now().await;
        }
        assert!(!root.is_cancelled());
        assert_eq!(root.stop(Duration::from_secs(5)).await, 0);
    }
}
