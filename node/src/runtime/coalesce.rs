//! Coalescing: a consumer takes whatever producers queued while it was busy, in one batch
//! bounded by item count, weight (operations) and bytes, and carries the first item that
//! does not fit over to the next batch. One rule ([`gather`]) serves every batcher of a
//! member: group proposals, transport lanes and the storage flusher.
//!
//! Queues are bounded, in items and (through a [`Budget`] several queues can share) in
//! bytes: a [`QueueSender`]'s `try_send` fails with [`QueueFull`] instead of buffering
//! without limit, so overload is answered (503 `overloaded`) rather than turned into memory.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use crate::runtime::Tasks;

/// What an item costs in a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Weight {
    /// Units the batch counts (operations of a proposal; 1 for a message).
    pub units: usize,
    /// Approximate bytes.
    pub bytes: usize,
}

/// Caps of one batch. The first item always goes in, whatever it weighs.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Units per batch, at most.
    pub units: usize,
    /// Bytes per batch, roughly.
    pub bytes: usize,
}

impl Limits {
    /// No caps: take everything waiting.
    pub const UNBOUNDED: Limits = Limits {
        units: usize::MAX,
        bytes: usize::MAX,
    };
}

/// Builds a batch from `first` and whatever `next` yields, until a cap is reached or `next`
/// has nothing more. Returns the batch and the item that did not fit, if any (it must head
/// the next batch, to keep order).
pub fn gather<T>(
    first: T,
    mut next: impl FnMut() -> Option<T>,
    weigh: impl Fn(&T) -> Weight,
    limits: Limits,
) -> (Vec<T>, Option<T>) {
    let w = weigh(&first);
    let (mut units, mut bytes) = (w.units, w.bytes);
    let mut batch = vec![first];
    while units < limits.units && bytes < limits.bytes {
        let Some(item) = next() else { break };
        let w = weigh(&item);
        if units.saturating_add(w.units) > limits.units
            || bytes.saturating_add(w.bytes) > limits.bytes
        {
            return (batch, Some(item));
        }
        units += w.units;
        bytes += w.bytes;
        batch.push(item);
    }
    (batch, None)
}

/// Bytes that may wait in the queues sharing it (every group of a member, say). Cloning
/// shares it.
#[derive(Clone, Debug)]
pub struct Budget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Budget {
            used: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Reserves `n` bytes; `false` (nothing reserved) when that would pass the limit.
    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// The queue was full (or its consumer stopped): the item was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueFull {
    /// The queue holds its capacity already.
    #[error("queue full")]
    Full,
    /// The consumer has stopped.
    #[error("queue closed")]
    Closed,
}

/// The producing side of a [`Coalescer`].
pub struct QueueSender<T> {
    tx: mpsc::Sender<T>,
    weigh: fn(&T) -> Weight,
    budget: Budget,
}

impl<T> Clone for QueueSender<T> {
    fn clone(&self) -> Self {
        QueueSender {
            tx: self.tx.clone(),
            weigh: self.weigh,
            budget: self.budget.clone(),
        }
    }
}

impl<T> QueueSender<T> {
    /// Queues `item`, or gives it back with why it was not queued.
    pub fn try_send(&self, item: T) -> Result<(), (QueueFull, T)> {
        let bytes = (self.weigh)(&item).bytes;
        if !self.budget.take(bytes) {
            return Err((QueueFull::Full, item));
        }
        self.tx.try_send(item).map_err(|e| {
            self.budget.give(bytes);
            match e {
                mpsc::error::TrySendError::Full(t) => (QueueFull::Full, t),
                mpsc::error::TrySendError::Closed(t) => (QueueFull::Closed, t),
            }
        })
    }
}

/// The consuming side: a bounded queue read in batches.
pub struct Coalescer<T> {
    rx: mpsc::Receiver<T>,
    carried: Option<T>,
    weigh: fn(&T) -> Weight,
    keep: fn(&T) -> bool,
    limits: Limits,
    budget: Budget,
}

impl<T> Coalescer<T> {
    /// A queue of at most `capacity` items and the bytes `budget` allows, batched under
    /// `limits`; `weigh` prices an item, and items for which `keep` is false when taken
    /// (expired requests) are dropped.
    pub fn new(
        capacity: usize,
        budget: Budget,
        limits: Limits,
        weigh: fn(&T) -> Weight,
        keep: fn(&T) -> bool,
    ) -> (QueueSender<T>, Self) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let c = Coalescer {
            rx,
            carried: None,
            weigh,
            keep,
            limits,
            budget: budget.clone(),
        };
        (QueueSender { tx, weigh, budget }, c)
    }

    /// The next item off the channel, its bytes given back to the budget.
    fn taken(&self, item: T) -> T {
        self.budget.give((self.weigh)(&item).bytes);
        item
    }

    /// Waits for the next item and returns it with everything else waiting, within the
    /// limits; `None` once every sender is gone and the queue is empty.
    pub async fn next_batch(&mut self) -> Option<Vec<T>> {
        loop {
            let first = match self.carried.take() {
                Some(item) => item,
                None => {
                    let item = self.rx.recv().await?;
                    self.taken(item)
                }
            };
            if !(self.keep)(&first) {
                continue;
            }
            let (rx, keep, weigh, budget) = (&mut self.rx, self.keep, self.weigh, &self.budget);
            let next = || loop {
                let item = rx.try_recv().ok()?;
                budget.give(weigh(&item).bytes);
                if keep(&item) {
                    return Some(item);
                }
            };
            let (batch, carried) = gather(first, next, self.weigh, self.limits);
            self.carried = carried;
            return Some(batch);
        }
    }

    /// Hands batches to `handle`, each as a task of `tasks`, with at most `in_flight`
    /// running at once; whatever queues while all are busy goes in the next batch. Returns
    /// when the queue closes or the tasks are cancelled; batches already handed over run to
    /// their end (their callers are waiting for the answer), tracked by `tasks`.
    pub async fn run<F, Fut>(mut self, in_flight: usize, tasks: Tasks, handle: F)
    where
        T: Send + 'static,
        F: Fn(Vec<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let batch = tokio::select! {
                _ = tasks.token().cancelled() => return,
                b = self.next_batch() => match b {
                    Some(b) => b,
                    None => return,
                },
            };
            let work = handle(batch);
            tasks.spawn_to_end(async move {
                work.await;
                drop(permit);
            });
        }
    }
}

impl<T> Drop for Coalescer<T> {
    /// Gives back the bytes of whatever is still queued (a removed replica's queue), so the
    /// shared budget does not shrink.
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(item) = self.rx.try_recv() {
            self.budget.give((self.weigh)(&item).bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn w(x: &(usize, usize)) -> Weight {
        Weight {
            units: x.0,
            bytes: x.1,
        }
    }

    #[test]
    fn gather_stops_at_caps_and_carries_the_misfit() {
        let limits = Limits {
            units: 10,
            bytes: 100,
        };
        let mut more = vec![(1, 50), (1, 60), (1, 1)].into_iter();
        let (batch, carried) = gather((1, 10), || more.next(), w, limits);
        assert_eq!(batch, vec![(1, 10), (1, 50)]);
        assert_eq!(carried, Some((1, 60)));
        // An item over the caps travels alone.
        let (batch, carried) = gather((50, 500), || Some((1, 1)), w, limits);
        assert_eq!((batch.len(), carried), (1, None));
        let mut more = (0..100).map(|_| (1, 1));
        let (batch, _) = gather((1, 1), || more.next(), w, limits);
        assert_eq!(batch.len(), 10);
    }

    #[tokio::test]
    async fn a_bounded_queue_refuses_when_full_and_batches_in_order() {
        let limits = Limits {
            units: 3,
            bytes: usize::MAX,
        };
        let (tx, mut c) = Coalescer::<(usize, usize)>::new(
            4,
            Budget::new(usize::MAX),
            limits,
            w,
            |x: &(usize, usize)| x.1 != 0,
        );
        for i in 1..=4 {
            assert!(tx.try_send((1, i)).is_ok());
        }
        assert_eq!(tx.try_send((1, 5)).map_err(|e| e.0), Err(QueueFull::Full));
        assert_eq!(c.next_batch().await, Some(vec![(1, 1), (1, 2), (1, 3)]));
        assert!(tx.try_send((1, 0)).is_ok(), "dropped when taken");
        assert!(tx.try_send((1, 6)).is_ok());
        assert_eq!(c.next_batch().await, Some(vec![(1, 4), (1, 6)]));
        drop(tx);
        assert_eq!(c.next_batch().await, None);
    }

    #[tokio::test]
    async fn run_bounds_batches_in_flight() {
        let limits = Limits {
            units: 2,
            bytes: usize::MAX,
        };
        let (tx, c) =
            Coalescer::<(usize, usize)>::new(64, Budget::new(usize::MAX), limits, w, |_| true);
        for i in 0..20 {
            assert!(tx.try_send((1, i)).is_ok());
        }
        drop(tx);
        let (running, most, done) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let tasks = Tasks::new();
        let (r, m, d) = (running.clone(), most.clone(), done.clone());
        c.run(3, tasks.clone(), move |batch| {
            let (r, m, d) = (r.clone(), m.clone(), d.clone());
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
                d.fetch_add(batch.len(), Ordering::SeqCst);
                r.fetch_sub(1, Ordering::SeqCst);
            }
        })
        .await;
        // The queue closed; the batches still in flight finish on their own.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tasks.running() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "batches never ended"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(done.load(Ordering::SeqCst), 20);
        assert!(most.load(Ordering::SeqCst) <= 3);
    }

    #[tokio::test]
    async fn a_shared_byte_budget_bounds_every_queue_and_comes_back() {
        let budget = Budget::new(100);
        let (tx1, mut c1) = Coalescer::new(10, budget.clone(), Limits::UNBOUNDED, w, |_| true);
        let (tx2, c2) = Coalescer::new(10, budget.clone(), Limits::UNBOUNDED, w, |_| true);
        assert!(tx1.try_send((1, 60)).is_ok());
        assert_eq!(tx2.try_send((1, 50)).map_err(|e| e.0), Err(QueueFull::Full));
        assert!(tx2.try_send((1, 40)).is_ok());
        assert_eq!(budget.used(), 100);
        assert_eq!(c1.next_batch().await, Some(vec![(1, 60)]));
        assert_eq!(budget.used(), 40);
        // A queue dropped with items in it gives their bytes back.
        drop(c2);
        assert_eq!(budget.used(), 0);
        assert_eq!(
            tx2.try_send((1, 1)).map_err(|e| e.0),
            Err(QueueFull::Closed)
        );
        assert_eq!(budget.used(), 0);
    }
}
