//! The wasm build's global allocator: dlmalloc (the one Rust's standard
//! library uses on wasm32) over a system layer that grows the wasm memory
//! geometrically.
//!
//! The standard library's dlmalloc grows memory by what each request needs,
//! in 64 KiB pages, so a database building up a few hundred MB (100,000
//! puts issued together) calls `memory.grow` thousands of times; in V8 each
//! call costs a fraction of a millisecond (it also detaches the JavaScript
//! views of the memory, which the bindings then rebuild), and a profile of
//! those puts in Node spent about a third of its CPU time there. Growing by
//! at least an eighth of the memory so far (at most 16 MiB at a time) makes
//! that a few dozen calls, for at most 16 MiB of memory not yet used.

use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::cell::UnsafeCell;
use core::ptr;

/// A wasm page.
const PAGE: usize = 64 * 1024;
/// The largest step beyond a request: 256 pages (16 MiB).
const MAX_EXTRA_PAGES: usize = 256;

/// `memory.grow` in geometric steps (see the module's comment).
struct Growing;

// SAFETY: the regions returned come from `memory.grow`, are never handed
// out twice and are never released (like the standard library's own).
unsafe impl dlmalloc::Allocator for Growing {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        let needed = size.div_ceil(PAGE);
        let extra = (wasm32::memory_size(0) / 8).min(MAX_EXTRA_PAGES);
        // Try the larger step first, then exactly what is needed (a memory
        // near its maximum may still have room for that).
        for pages in [needed + extra, needed] {
            let previous = wasm32::memory_grow(0, pages);
            if previous != usize::MAX {
                return ((previous * PAGE) as *mut u8, pages * PAGE, 0);
            }
        }
        (ptr::null_mut(), 0, 0)
    }

    fn remap(&self, _ptr: *mut u8, _old: usize, _new: usize, _can_move: bool) -> *mut u8 {
        ptr::null_mut()
    }

    fn free_part(&self, _ptr: *mut u8, _old: usize, _new: usize) -> bool {
        false
    }

    fn free(&self, _ptr: *mut u8, _size: usize) -> bool {
        false
    }

    fn can_release_part(&self, _flags: u32) -> bool {
        false
    }

    fn allocates_zeros(&self) -> bool {
        true
    }

    fn page_size(&self) -> usize {
        PAGE
    }
}

/// The global allocator: one dlmalloc over [`Growing`].
pub(crate) struct Allocator(UnsafeCell<dlmalloc::Dlmalloc<Growing>>);

// SAFETY: wasm32-unknown-unknown without the atomics feature has one
// thread, so the allocator is never entered twice at once (allocation is
// not reentrant either: dlmalloc does not allocate).
unsafe impl Sync for Allocator {}

#[global_allocator]
static ALLOCATOR: Allocator = Allocator(UnsafeCell::new(dlmalloc::Dlmalloc::new_with_allocator(
    Growing,
)));

// SAFETY: each method forwards to dlmalloc with the contract of
// `GlobalAlloc` (which dlmalloc's own global allocator relies on too);
// exclusive access is the single thread's (see `Sync` above).
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.0.get()).malloc(layout.size(), layout.align()) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { (*self.0.get()).free(ptr, layout.size(), layout.align()) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { (*self.0.get()).calloc(layout.size(), layout.align()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { (*self.0.get()).realloc(ptr, layout.size(), layout.align(), new_size) }
    }
}
