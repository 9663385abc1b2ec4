//! Change notifications: what changed, where it came from, and the streams
//! that carry them to applications.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use futures::Stream;
use futures::task::AtomicWaker;

pub use sync_core::Origin;

/// Changes kept for a subscriber that does not keep up; beyond this its
/// stream reports [`Change::Lagged`] once and drops the backlog.
const BACKLOG: usize = 4096;

/// Something changed in the database.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A document was written, deleted, or removed with its collection.
    Document {
        /// Its collection.
        collection: String,
        /// Its id.
        id: String,
        /// A write made here, or one received from the relay.
        origin: Origin,
    },
    /// A collection was created or dropped.
    Collection {
        /// The collection.
        collection: String,
        /// A write made here, or one received from the relay.
        origin: Origin,
    },
    /// The subscriber fell more than a few thousand changes behind and
    /// missed some: re-read what it shows.
    Lagged,
}

impl Change {
    /// The collection the change is about (`None` for [`Change::Lagged`]).
    pub fn collection(&self) -> Option<&str> {
        match self {
            Change::Document { collection, .. } | Change::Collection { collection, .. } => {
                Some(collection)
            }
            Change::Lagged => None,
        }
    }
}

/// Which changes a subscriber wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Filter {
    All,
    Collection(String),
    Document { collection: String, id: String },
}

impl Filter {
    fn wants(&self, change: &Change) -> bool {
        match (self, change) {
            (Filter::All, _) | (_, Change::Lagged) => true,
            (Filter::Collection(c), change) => change.collection() == Some(c),
            (
                Filter::Document { collection, id },
                Change::Document {
                    collection: c,
                    id: i,
                    ..
                },
            ) => collection == c && id == i,
            (Filter::Document { collection, .. }, Change::Collection { collection: c, .. }) => {
                collection == c
            }
        }
    }
}

#[derive(Debug, Default)]
struct Queue {
    changes: VecDeque<Change>,
    /// The database closed: the stream ends once drained.
    ended: bool,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    waker: AtomicWaker,
    filter: Filter,
}

/// The database's side of every subscription.
#[derive(Debug, Default)]
pub(crate) struct Subscribers {
    list: Vec<Weak<Shared>>,
}

impl Subscribers {
    /// A new subscription for `filter`.
    pub(crate) fn subscribe(&mut self, filter: Filter) -> Subscription {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            waker: AtomicWaker::new(),
            filter,
        });
        self.list.push(Arc::downgrade(&shared));
        Subscription { shared }
    }

    /// Hands `change` to every subscriber that wants it; forgets dropped ones.
    pub(crate) fn publish(&mut self, change: &Change) {
        self.list.retain(|weak| {
            let Some(shared) = weak.upgrade() else {
                return false;
            };
            if shared.filter.wants(change) {
                let mut queue = lock(&shared.queue);
                if queue.changes.len() >= BACKLOG {
                    queue.changes.clear();
                    queue.changes.push_back(Change::Lagged);
                } else {
                    queue.changes.push_back(change.clone());
                }
                drop(queue);
                shared.waker.wake();
            }
            true
        });
    }

    /// Ends every stream (the database closed).
    pub(crate) fn end_all(&mut self) {
        for weak in self.list.drain(..) {
            if let Some(shared) = weak.upgrade() {
                lock(&shared.queue).ended = true;
                shared.waker.wake();
            }
        }
    }
}

/// A stream of changes, from [`crate::Database::subscribe`] or a
/// collection's `subscribe`. Dropping it unsubscribes. It never blocks the
/// database: a subscriber that falls far behind gets [`Change::Lagged`].
#[derive(Debug)]
pub struct Subscription {
    shared: Arc<Shared>,
}

impl Subscription {
    /// The next change already queued, without waiting.
    pub fn try_next(&mut self) -> Option<Change> {
        lock(&self.shared.queue).changes.pop_front()
    }
}

impl Stream for Subscription {
    type Item = Change;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Change>> {
        self.shared.waker.register(cx.waker());
        let mut queue = lock(&self.shared.queue);
        match queue.changes.pop_front() {
            Some(change) => Poll::Ready(Some(change)),
            None if queue.ended => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

/// Locks a mutex, recovering from a panic elsewhere (the data stays consistent:
/// every critical section here is a few field updates).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(c: &str, id: &str) -> Change {
        Change::Document {
            collection: c.into(),
            id: id.into(),
            origin: Origin::Local,
        }
    }

    #[test]
    fn filters_pick_their_changes() {
        let mut subs = Subscribers::default();
        let mut all = subs.subscribe(Filter::All);
        let mut todos = subs.subscribe(Filter::Collection("todos".into()));
        let mut one = subs.subscribe(Filter::Document {
            collection: "todos".into(),
            id: "a".into(),
        });
        subs.publish(&doc("todos", "a"));
        subs.publish(&doc("todos", "b"));
        subs.publish(&doc("notes", "a"));
        assert_eq!(std::iter::from_fn(|| all.try_next()).count(), 3);
        assert_eq!(std::iter::from_fn(|| todos.try_next()).count(), 2);
        assert_eq!(one.try_next(), Some(doc("todos", "a")));
        assert_eq!(one.try_next(), None);
    }

    #[test]
    fn a_slow_subscriber_lags_instead_of_growing_without_bound() {
        let mut subs = Subscribers::default();
        let mut slow = subs.subscribe(Filter::All);
        for i in 0..BACKLOG + 10 {
            subs.publish(&doc("c", &i.to_string()));
        }
        let got: Vec<Change> = std::iter::from_fn(|| slow.try_next()).collect();
        assert_eq!(got[0], Change::Lagged);
        assert_eq!(got.len(), 10);
    }

    #[test]
    fn dropped_subscriptions_are_forgotten() {
        let mut subs = Subscribers::default();
        let sub = subs.subscribe(Filter::All);
        drop(sub);
        subs.publish(&doc("c", "a"));
        assert!(subs.list.is_empty());
    }
}
