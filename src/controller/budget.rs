//! The write budget: how many writes the controller has in flight at once, both kinds and their
//! Events together, handed out by priority: a waiting claim before a waiting volume (a claim's
//! label is what pods wait for), both before an Event.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Who waits for a write permit, most urgent first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    Claim = 0,
    Volume = 1,
    Event = 2,
}

const LEVELS: usize = 3;

/// A fixed number of permits, shared; cheap to clone.
#[derive(Clone)]
pub struct WriteBudget {
    inner: Arc<Inner>,
}

struct Inner {
    permits: usize,
    state: Mutex<State>,
}

/// Invariant: `free > 0` only while nobody waits.
struct State {
    free: usize,
    waiting: [VecDeque<oneshot::Sender<Permit>>; LEVELS],
}

/// One write in flight; dropping it passes the permit to the most urgent waiter.
pub struct Permit {
    /// `None` once the permit went back to the free count.
    inner: Option<Arc<Inner>>,
}

impl WriteBudget {
    /// A budget of `permits` writes at once (at least one).
    pub fn new(permits: usize) -> WriteBudget {
        let permits = permits.max(1);
        WriteBudget {
            inner: Arc::new(Inner {
                permits,
                state: Mutex::new(State {
                    free: permits,
                    waiting: Default::default(),
                }),
            }),
        }
    }

    /// How many writes may be in flight at once.
    pub fn permits(&self) -> usize {
        self.inner.permits
    }

    /// Waits for a permit. Waiters of one priority are served in order; a dropped wait gives
    /// up its place.
    pub async fn acquire(&self, priority: Priority) -> Permit {
        let receiver = {
            let mut state = self.inner.lock();
            if state.free > 0 {
                state.free -= 1;
                return Permit {
                    inner: Some(self.inner.clone()),
                };
            }
            let (sender, receiver) = oneshot::channel();
            state.waiting[priority as usize].push_back(sender);
            receiver
        };
        // The sender lives in the budget, which this wait keeps alive through `self`.
        receiver.await.expect("the budget outlives its waiters")
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands a returned permit to the most urgent waiter still waiting, else frees it.
    fn release(self: Arc<Self>) {
        let mut permit = Permit {
            inner: Some(self.clone()),
        };
        let mut state = self.lock();
        loop {
            let next = state.waiting.iter_mut().find_map(VecDeque::pop_front);
            let Some(sender) = next else {
                state.free += 1;
                permit.inner = None;
                return;
            };
            // A waiter that gave up has dropped its receiver: the permit comes back.
            match sender.send(permit) {
                Ok(()) => return,
                Err(back) => permit = back,
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn permits_are_limited_and_come_back() {
        let budget = WriteBudget::new(2);
        let a = budget.acquire(Priority::Volume).await;
        let _b = budget.acquire(Priority::Volume).await;
        let third =
            tokio::time::timeout(Duration::from_millis(50), budget.acquire(Priority::Claim));
        assert!(third.await.is_err(), "a third write waits");
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(1), budget.acquire(Priority::Claim))
            .await
            .expect("a returned permit is handed out");
    }

    #[tokio::test]
    async fn claims_go_before_volumes_and_volumes_before_events() {
        let budget = WriteBudget::new(1);
        let held = budget.acquire(Priority::Claim).await;
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        // Queued least urgent first.
        for (name, priority) in [
            ("event", Priority::Event),
            ("volume-1", Priority::Volume),
            ("volume-2", Priority::Volume),
            ("claim", Priority::Claim),
        ] {
            let (budget, order_tx) = (budget.clone(), order_tx.clone());
            tokio::spawn(async move {
                let _permit = budget.acquire(priority).await;
                order_tx.send(name).unwrap();
            });
            settle().await;
        }
        drop(held);
        let mut served = Vec::new();
        for _ in 0..4 {
            served.push(order.recv().await.unwrap());
        }
        assert_eq!(served, ["claim", "volume-1", "volume-2", "event"]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_loses_nothing() {
        let budget = WriteBudget::new(1);
        let held = budget.acquire(Priority::Volume).await;
        let gave_up =
            tokio::time::timeout(Duration::from_millis(20), budget.acquire(Priority::Claim)).await;
        assert!(gave_up.is_err());
        drop(held);
        let _again = tokio::time::timeout(Duration::from_secs(1), budget.acquire(Priority::Event))
            .await
            .expect("the permit skipped the abandoned wait");
        assert_eq!(budget.inner.lock().free, 0);
    }
}
