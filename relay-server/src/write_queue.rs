//! The queue between room tasks and the storage writer thread, with a
//! "more is coming" handshake so that a room's next write joins the very
//! next group commit.
//!
//! Why the handshake: a room keeps one write in flight and, meanwhile, goes
//! on handling input without polling its `Room` (polling builds one
//! `Deliver` per session, so it happens once per commit). When the commit
//! completes, the room polls and submits what arrived during it. Left
//! alone, the writer would start its next group the moment a commit ends,
//! before the woken room has submitted, and the room's request would wait
//! for that whole commit before its own. Keeping a second request queued
//! instead (the relay's earlier design) costs the same: it is built a
//! commit early. Either way an operation waited about 2.5 commit times.
//!
//! So a room that handled writes while its request was in flight says so
//! ([`FollowUp::promise`]). When the writer finishes that request it notes
//! the promise ([`FollowUp::seal`]) and, before starting the next group,
//! waits until every promising room has submitted or said it has nothing
//! ([`FollowUp::settle`]), at most until a deadline the writer picks. An
//! operation then waits for the rest of the commit under way and its own:
//! about 1.5 commit times plus one task wakeup. Rooms that did not promise
//! never delay a group, and a room that misses the deadline only misses
//! that group.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// A request nobody has said anything about yet.
const IDLE: u8 = 0;
/// The room will submit again as soon as this request completes.
const PROMISED: u8 = 1;
/// Completed with a promise: the writer waits for the room.
const AWAITED: u8 = 2;
/// Nothing (more) to wait for.
const SETTLED: u8 = 3;

/// Jobs for the writer thread, in submission order, and a condition
/// variable that wakes it for new jobs and settled promises.
///
/// Unbounded by itself: each room keeps a bounded number of requests
/// outstanding, which bounds the queue by the number of loaded rooms.
#[derive(Debug)]
pub(crate) struct WriteQueue<J> {
    state: Mutex<State<J>>,
    wake: Condvar,
}

#[derive(Debug)]
struct State<J> {
    jobs: VecDeque<J>,
    closed: bool,
}

impl<J> Default for WriteQueue<J> {
    fn default() -> Self {
        WriteQueue {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                closed: false,
            }),
            wake: Condvar::new(),
        }
    }
}

impl<J> WriteQueue<J> {
    fn lock(&self) -> MutexGuard<'_, State<J>> {
        // A panic while holding this lock cannot leave the queue half
        // updated (every critical section is a push, a drain or a flag).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job for the writer and settles `follow_up` in the same step,
    /// so the writer wakes once and finds both. Gives the job back once the
    /// writer has stopped.
    pub(crate) fn push(&self, job: J, follow_up: Option<&FollowUp>) -> Result<(), J> {
        let mut state = self.lock();
        if state.closed {
            drop(state);
            if let Some(follow_up) = follow_up {
                follow_up.settle(self);
            }
            return Err(job);
        }
        state.jobs.push_back(job);
        if let Some(follow_up) = follow_up {
            follow_up.0.store(SETTLED, Ordering::Release);
        }
        drop(state);
        self.wake.notify_all();
        Ok(())
    }

    /// Writer: waits for at least one job, and, until `wait_until`, for every
    /// follow-up in `awaited` to settle; then moves up to `max` jobs into
    /// `into` and forgets `awaited`. Returns how many follow-ups it gave up on.
    pub(crate) fn take(
        &self,
        awaited: &mut Vec<FollowUp>,
        wait_until: Instant,
        max: usize,
        into: &mut Vec<J>,
    ) -> usize {
        let mut state = self.lock();
        loop {
            awaited.retain(FollowUp::is_awaited);
            let waiting = !awaited.is_empty() && Instant::now() < wait_until;
            if !state.jobs.is_empty() && !waiting {
                break;
            }
            state = if state.jobs.is_empty() {
                self.wake.wait(state).unwrap_or_else(|e| e.into_inner())
            } else {
                let left = wait_until.saturating_duration_since(Instant::now());
                self.wake
                    .wait_timeout(state, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            };
        }
        let missed = awaited.len();
        awaited.clear();
        let n = state.jobs.len().min(max);
        into.extend(state.jobs.drain(..n));
        missed
    }

    /// Writer, stopping: refuses further jobs and hands back those still
    /// queued (dropping them tells their submitters the writer stopped).
    pub(crate) fn close(&self) -> VecDeque<J> {
        let mut state = self.lock();
        state.closed = true;
        std::mem::take(&mut state.jobs)
    }
}

/// The handshake cell of one write request, shared by the room that made
/// it and the writer.
#[derive(Clone, Debug, Default)]
pub(crate) struct FollowUp(Arc<AtomicU8>);

impl FollowUp {
    /// Room: more writes will follow as soon as this request completes.
    /// Too late once the writer has finished the request (the room is then
    /// about to hear so and submits at once anyway).
    pub(crate) fn promise(&self) {
        let _ = self
            .0
            .compare_exchange(IDLE, PROMISED, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Writer, once the request is committed and before completing it:
    /// whether to wait for the room's next request.
    pub(crate) fn seal(&self) -> bool {
        match self
            .0
            .compare_exchange(PROMISED, AWAITED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(_) => {
                // Late promises are refused from here on.
                let _ = self
                    .0
                    .compare_exchange(IDLE, SETTLED, Ordering::AcqRel, Ordering::Acquire);
                false
            }
        }
    }

    /// Room, after handling the completion without a new request (nothing
    /// to write, or the room is closing): the writer need not wait.
    pub(crate) fn settle<J>(&self, queue: &WriteQueue<J>) {
        if self.0.swap(SETTLED, Ordering::AcqRel) == AWAITED {
            // Under the lock, so a writer between its check and its wait
            // cannot miss the wakeup.
            drop(queue.lock());
            queue.wake.notify_all();
        }
    }

    fn is_awaited(&self) -> bool {
        self.0.load(Ordering::Acquire) == AWAITED
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn take_now(queue: &WriteQueue<u32>, awaited: &mut Vec<FollowUp>, ms: u64) -> Vec<u32> {
        let mut jobs = Vec::new();
        let awaiting = awaited.len();
        let missed = queue.take(
            awaited,
            Instant::now() + Duration::from_millis(ms),
            10,
            &mut jobs,
        );
        assert!(missed <= awaiting);
        jobs
    }

    #[test]
    fn promise_then_seal_waits_until_the_room_submits() {
        let queue = Arc::new(WriteQueue::default());
        let follow_up = FollowUp::default();
        follow_up.promise();
        assert!(follow_up.seal());
        queue.push(1, None).unwrap();
        let room = {
            let (queue, follow_up) = (queue.clone(), follow_up.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                queue.push(2, Some(&follow_up)).unwrap();
            })
        };
        // Without the wait the writer would take job 1 alone.
        let jobs = take_now(&queue, &mut vec![follow_up], 10_000);
        assert_eq!(jobs, vec![1, 2]);
        room.join().unwrap();
    }

    #[test]
    fn settling_without_a_request_releases_the_writer() {
        let queue = Arc::new(WriteQueue::default());
        let follow_up = FollowUp::default();
        follow_up.promise();
        assert!(follow_up.seal());
        queue.push(1, None).unwrap();
        let room = {
            let (queue, follow_up) = (queue.clone(), follow_up.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                follow_up.settle(&queue);
            })
        };
        let started = Instant::now();
        assert_eq!(take_now(&queue, &mut vec![follow_up], 10_000), vec![1]);
        assert!(started.elapsed() < Duration::from_secs(5));
        room.join().unwrap();
    }

    #[test]
    fn the_wait_is_bounded_and_unpromised_requests_never_wait() {
        let queue = WriteQueue::default();
        let silent = FollowUp::default();
        assert!(!silent.seal());
        // A promise after the seal is too late and changes nothing.
        silent.promise();
        assert!(!silent.is_awaited());

        let late = FollowUp::default();
        late.promise();
        assert!(late.seal());
        queue.push(7, None).unwrap();
        let started = Instant::now();
        let mut jobs = Vec::new();
        let deadline = started + Duration::from_millis(30);
        assert_eq!(queue.take(&mut vec![late], deadline, 10, &mut jobs), 1);
        assert_eq!(jobs, vec![7]);
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn a_closed_queue_gives_jobs_back() {
        let queue = WriteQueue::default();
        queue.push(1, None).unwrap();
        assert_eq!(queue.close(), VecDeque::from([1]));
        assert_eq!(queue.push(2, None), Err(2));
    }
}
