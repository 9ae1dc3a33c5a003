//! Recording from several threads at once: spans/s through model_metrics (classify and record, from requests
//! already decoded) with 1, 2, ... threads, each thread consuming requests of 1,000 spans in a loop, as the workers
//! of a traces pipeline do. Two ways for each thread count: the processor's shards (one per runtime thread, as in
//! the collector), and one shard for all threads (every request waits for the one lock).
//!
//! `cargo bench -p infercol-processors --bench parallel [-- SECONDS]`; up to the machine's thread count.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use infercol_pipelines::{Connector, Data, Signal};
use prost::Message;

#[path = "../tests/support/spans.rs"]
mod spans;

/// Spans per second through `processor` from `threads` tasks on a runtime of as many threads, for `seconds`.
fn run(threads: usize, one_shard: bool, requests: &Arc<Vec<Data>>, seconds: f64) -> f64 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    // The processor takes one shard per thread of the runtime it is created in; outside one, a single shard.
    let processor: Arc<dyn Connector> = if one_shard {
        spans::processor()
    } else {
        let _inside = runtime.enter();
        spans::processor()
    };
    let (stop, spans) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let tasks: Vec<_> = (0..threads)
        .map(|t| {
            let (processor, requests) = (processor.clone(), requests.clone());
            let (stop, spans) = (stop.clone(), spans.clone());
            runtime.spawn(async move {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let data = requests[i % requests.len()].clone();
                    let n = data.items() as u64;
                    processor.consume(data).await.unwrap();
                    spans.fetch_add(n, Ordering::Relaxed);
                    i += threads;
                }
            })
        })
        .collect();
    // The tasks never wait on anything (the processor's next consumer discards at once), so the runtime's own
    // timers would not run: this thread keeps the time.
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    runtime.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    spans.load(Ordering::Relaxed) as f64 / elapsed
}

fn main() {
    let seconds: f64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(3.0);
    // As the receivers pass them on: the borrowed views of protobuf bytes; 16 requests, 4 resources each.
    let requests: Arc<Vec<Data>> = Arc::new(
        (0..16)
            .map(|_| Data::decode(Signal::Traces, spans::request(250).encode_to_vec().into()).unwrap())
            .collect(),
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut counts = vec![1];
    while counts.last().unwrap() * 2 <= cores {
        counts.push(counts.last().unwrap() * 2);
    }
    if *counts.last().unwrap() != cores {
        counts.push(cores);
    }
    println!("threads | shards: spans/s | one shard: spans/s");
    let base = run(1, false, &requests, seconds);
    for threads in counts {
        let sharded = if threads == 1 {
            base
        } else {
            run(threads, false, &requests, seconds)
        };
        let one = run(threads, true, &requests, seconds);
        println!(
            "{threads} | {sharded:.0} ({:.2}x) | {one:.0} ({:.2}x)",
            sharded / base,
            one / base
        );
    }
}
