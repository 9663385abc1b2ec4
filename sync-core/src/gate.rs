//! The rule both state machines enforce for their hosts: no output leaves
//! before every persist queued ahead of it is durable.
//!
//! A state machine queues its outputs here in order. Persists are handed to
//! the host as early as possible (the host writes them in the order it gets
//! them, and may merge consecutive ones into one transaction); every other
//! output waits until each persist queued ahead of it is reported durable.
//! An acknowledgement therefore only ever describes stored operations, and
//! no host can get that ordering wrong, however late its writes complete.

use std::collections::{BTreeSet, VecDeque};

/// Identifies one persist batch handed to the host, which reports it back
/// with `Persisted(id)` or `PersistFailed(id)`. Ids grow in the order the
/// batches are handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PersistId(pub u64);

#[derive(Clone, Debug)]
enum Slot<T> {
    /// An output that waits for the persists queued ahead of it.
    Out(T),
    /// Where a persist was queued: outputs behind it wait until it is
    /// durable (its id is below [`Gate::durable_below`]).
    Marker(PersistId),
}

/// Outputs in order, released up to the first persist not yet durable.
#[derive(Clone, Debug)]
pub(crate) struct Gate<T> {
    queue: VecDeque<Slot<T>>,
    /// Persists not yet handed to the host, in order.
    unissued: VecDeque<(PersistId, T)>,
    next_id: u64,
    /// Every id below this one is durable.
    durable_below: u64,
    /// Ids at or above `durable_below` reported durable out of order. Hosts
    /// report in order, so this is almost always empty; together with
    /// `durable_below` it makes each report O(log n) however many persists
    /// wait (a scan of the queue per report made thousands of writes
    /// completing together quadratic).
    durable_above: BTreeSet<u64>,
}

impl<T> Default for Gate<T> {
    fn default() -> Self {
        Gate {
            queue: VecDeque::new(),
            unissued: VecDeque::new(),
            next_id: 1,
            durable_below: 1,
            durable_above: BTreeSet::new(),
        }
    }
}

impl<T> Gate<T> {
    /// Queues an output behind everything queued so far.
    pub(crate) fn push(&mut self, out: T) {
        self.queue.push_back(Slot::Out(out));
    }

    /// Queues a persist, built around the id it gets.
    pub(crate) fn push_persist(&mut self, make: impl FnOnce(PersistId) -> T) -> PersistId {
        let id = PersistId(self.next_id);
        self.next_id += 1;
        self.queue.push_back(Slot::Marker(id));
        self.unissued.push_back((id, make(id)));
        id
    }

    /// The next output the host may act on: those ahead of the first
    /// persist not yet durable, then the persists not yet handed out.
    pub(crate) fn pop(&mut self) -> Option<T> {
        loop {
            match self.queue.front() {
                Some(Slot::Out(_)) => {
                    if let Some(Slot::Out(out)) = self.queue.pop_front() {
                        return Some(out);
                    }
                }
                Some(Slot::Marker(id)) if id.0 < self.durable_below => {
                    self.queue.pop_front();
                }
                Some(Slot::Marker(_)) | None => break,
            }
        }
        self.unissued.pop_front().map(|(_, out)| out)
    }

    /// Whether outputs wait behind a persist that is not durable yet.
    #[cfg(test)]
    fn is_blocked(&self) -> bool {
        matches!(self.queue.front(), Some(Slot::Marker(id)) if id.0 >= self.durable_below)
    }

    /// Records that the persist `id` is durable. Returns `false` for an id
    /// that was never handed out or is already settled.
    pub(crate) fn persisted(&mut self, id: PersistId) -> bool {
        if self.unissued.front().is_some_and(|(first, _)| *first <= id) || id.0 >= self.next_id {
            return false; // Not handed out yet: the host cannot have written it.
        }
        if id.0 < self.durable_below || !self.durable_above.insert(id.0) {
            return false; // Already settled.
        }
        while self.durable_above.remove(&self.durable_below) {
            self.durable_below += 1;
        }
        true
    }

    /// Every persist handed out so far that is durable: ids below this one.
    pub(crate) fn durable_below(&self) -> PersistId {
        PersistId(self.durable_below)
    }

    /// The id the next persist will get.
    pub(crate) fn next_id(&self) -> PersistId {
        PersistId(self.next_id)
    }

    /// Whether `id` was handed out or queued (and not yet settled).
    pub(crate) fn is_pending(&self, id: PersistId) -> bool {
        id.0 >= self.durable_below && id.0 < self.next_id
    }

    /// Drops every queued output and persist, durable or not: the state
    /// machine gave up on them (a persist failed). Ids keep growing.
    pub(crate) fn clear(&mut self) {
        self.queue.clear();
        self.unissued.clear();
        self.durable_above.clear();
        self.durable_below = self.next_id;
    }

    /// Whether nothing at all is queued.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.unissued.is_empty()
    }

    /// Every queued output, released or not, for inspection in order
    /// (persists not yet handed out come last).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue
            .iter()
            .filter(|s| matches!(s, Slot::Out(_)))
            .count()
            + self.unissued.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum O {
        P(PersistId),
        T(&'static str),
    }

    fn drain(gate: &mut Gate<O>) -> Vec<O> {
        std::iter::from_fn(|| gate.pop()).collect()
    }

    #[test]
    fn outputs_wait_for_the_persist_ahead_of_them() {
        let mut g = Gate::default();
        g.push(O::T("a"));
        let p1 = g.push_persist(O::P);
        g.push(O::T("b"));
        let p2 = g.push_persist(O::P);
        g.push(O::T("c"));
        // The persists are handed out at once; b and c wait.
        assert_eq!(drain(&mut g), vec![O::T("a"), O::P(p1), O::P(p2)]);
        assert!(g.is_blocked());
        assert_eq!(g.len(), 2);
        // p2 durable first: nothing moves, p1 is still ahead of b.
        assert!(g.persisted(p2));
        assert_eq!(drain(&mut g), vec![]);
        assert_eq!(g.durable_below(), p1);
        assert!(g.persisted(p1));
        assert_eq!(drain(&mut g), vec![O::T("b"), O::T("c")]);
        assert_eq!(g.durable_below(), PersistId(3));
        assert!(g.is_empty());
    }

    #[test]
    fn an_output_queued_after_release_goes_out_at_once() {
        let mut g = Gate::default();
        let p = g.push_persist(O::P);
        assert_eq!(drain(&mut g), vec![O::P(p)]);
        g.push(O::T("x"));
        assert_eq!(drain(&mut g), vec![]);
        g.persisted(p);
        g.push(O::T("y"));
        assert_eq!(drain(&mut g), vec![O::T("x"), O::T("y")]);
    }

    #[test]
    fn unknown_or_unissued_ids_are_refused() {
        let mut g = Gate::default();
        let p = g.push_persist(O::P);
        assert!(!g.persisted(p), "not handed out yet");
        assert_eq!(drain(&mut g), vec![O::P(p)]);
        assert!(!g.persisted(PersistId(99)));
        assert!(g.persisted(p));
        assert!(!g.persisted(p), "already settled");
    }

    #[test]
    fn clear_drops_everything_and_settles_the_ids() {
        let mut g = Gate::default();
        let p = g.push_persist(O::P);
        g.push(O::T("held"));
        assert_eq!(drain(&mut g), vec![O::P(p)]);
        g.clear();
        assert!(!g.is_pending(p));
        assert!(!g.persisted(p));
        assert_eq!(drain(&mut g), vec![]);
        let q = g.push_persist(O::P);
        assert!(q > p, "ids keep growing");
    }
}
