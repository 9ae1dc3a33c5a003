//! model_metrics allocates nothing per span: recording a request of 1,000 spans allocates no more than recording
//! one of 100 spans over the same resources (what it allocates is per request and per resource: the resource's
//! attributes and dimensions). Counted by a global allocator that wraps the system's, in a test binary of its own.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use infercol_pipelines::{Data, Signal};
use prost::Message;

#[path = "support/spans.rs"]
mod spans;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed to the system allocator unchanged; the wrapper only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn recording_allocates_nothing_per_span() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let processor = spans::processor();
    let small = Data::decode(Signal::Traces, spans::request(25).encode_to_vec().into()).unwrap();
    let large = Data::decode(Signal::Traces, spans::request(250).encode_to_vec().into()).unwrap();
    assert!(small.view().is_some() && large.view().is_some());
    let (small_spans, large_spans) = (small.items() as u64, large.items() as u64);
    assert_eq!((small_spans, large_spans), (100, 1_000));
    // Warm up: the series, their histograms' buckets and windows exist after the first requests.
    for _ in 0..20 {
        runtime.block_on(processor.consume(large.clone())).unwrap();
    }
    let rounds = 50;
    let count = |data: &Data| {
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..rounds {
            runtime.block_on(processor.consume(data.clone())).unwrap();
        }
        (ALLOCATIONS.load(Ordering::Relaxed) - before) / rounds
    };
    let (per_small, per_large) = (count(&small), count(&large));
    assert!(
        per_large <= per_small,
        "{per_large} allocations per request of {large_spans} spans, {per_small} per request of {small_spans}"
    );
    // And what is allocated per request is a few per resource.
    assert!(per_large < 100, "{per_large} allocations per request of 4 resources");
}
