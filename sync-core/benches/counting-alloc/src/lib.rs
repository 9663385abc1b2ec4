//! A global allocator for benchmarks that counts live heap bytes.
//!
//! It forwards every call to [`std::alloc::System`] and keeps relaxed atomic
//! counters on the side. Install it in a benchmark binary with
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: counting_alloc::Counting = counting_alloc::Counting;
//! ```
//!
//! and read [`stats`] before and after the work to measure. Declaring the
//! static needs no `unsafe`, so the benchmark itself stays under the
//! workspace's `unsafe_code = "forbid"`; only this crate implements the
//! unsafe trait.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The counting allocator: [`System`] plus counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_ALLOCS: AtomicUsize = AtomicUsize::new(0);
static PEAK_BYTES: AtomicUsize = AtomicUsize::new(0);
static LIVE_CHUNK_BYTES: AtomicUsize = AtomicUsize::new(0);

/// A reading of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes requested by live allocations (what the program asked for).
    pub live_bytes: usize,
    /// Number of live allocations.
    pub live_allocs: usize,
    /// Highest `live_bytes` since the last [`reset_peak`].
    pub peak_bytes: usize,
    /// Estimated bytes the live allocations occupy inside a glibc-style
    /// malloc: 8 bytes of chunk header, rounded up to 16, at least 32.
    /// An estimate of allocator overhead, not a measurement.
    pub live_chunk_bytes: usize,
}

/// Reads the counters.
pub fn stats() -> Stats {
    Stats {
        live_bytes: LIVE_BYTES.load(Relaxed),
        live_allocs: LIVE_ALLOCS.load(Relaxed),
        peak_bytes: PEAK_BYTES.load(Relaxed),
        live_chunk_bytes: LIVE_CHUNK_BYTES.load(Relaxed),
    }
}

/// Restarts peak tracking from the current live byte count.
pub fn reset_peak() {
    PEAK_BYTES.store(LIVE_BYTES.load(Relaxed), Relaxed);
}

/// glibc malloc's chunk size for a request of `size` bytes (x86_64).
fn chunk(size: usize) -> usize {
    (size.saturating_add(8 + 15) & !15).max(32)
}

fn on_alloc(size: usize) {
    let live = LIVE_BYTES.fetch_add(size, Relaxed) + size;
    LIVE_ALLOCS.fetch_add(1, Relaxed);
    LIVE_CHUNK_BYTES.fetch_add(chunk(size), Relaxed);
    PEAK_BYTES.fetch_max(live, Relaxed);
}

fn on_dealloc(size: usize) {
    LIVE_BYTES.fetch_sub(size, Relaxed);
    LIVE_ALLOCS.fetch_sub(1, Relaxed);
    LIVE_CHUNK_BYTES.fetch_sub(chunk(size), Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged and returns its result, so `System`'s guarantees carry over; the
// counters are plain atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract for `layout`.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            on_alloc(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            on_alloc(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, that is by `System`,
        // with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) };
        on_dealloc(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract, and
        // `ptr` came from `System` with `layout`.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            on_dealloc(layout.size());
            on_alloc(new_size);
        }
        new
    }
}

#[cfg(test)]
mod tests {
    #[global_allocator]
    static ALLOC: super::Counting = super::Counting;

    #[test]
    fn counts_a_vec() {
        let before = super::stats();
        let v: Vec<u64> = Vec::with_capacity(1000);
        let during = super::stats();
        assert!(during.live_bytes >= before.live_bytes + 8000 - 4096);
        drop(v);
        assert!(super::stats().peak_bytes >= during.live_bytes);
    }
}
