//! A periodic task a processor starts and stops (the batch timeout, model_metrics' flush interval).

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long `stop` waits for a tick in progress. A flush waiting for room in a full exporter queue is answered
/// when the queues are abandoned, 15 s into shutdown (of 30 s in all); this bound is for a tick stuck elsewhere.
const STOP_WAIT: Duration = Duration::from_secs(15);

#[derive(Default)]
pub(crate) struct Ticker(Mutex<Option<Running>>);

struct Running {
    /// Sent (or dropped, with the ticker) to end the loop between ticks.
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Ticker {
    /// Runs `tick` every `every`, the first time `every` from now; a slow tick delays the next.
    pub fn start<F, Fut>(&self, every: Duration, mut tick: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // Only the wait is raced with the stop: a tick once begun runs to its end, since a flush holds
                // data taken out of the processor that nothing else would send.
                tokio::select! {
                    biased;
                    _ = &mut stopped => return,
                    _ = ticks.tick() => {}
                }
                tick().await;
            }
        });
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(Running { stop, task });
        }
    }

    /// Stops the task: a tick in progress finishes first (up to `STOP_WAIT`, then it is cut off and what it held
    /// is lost, logged as `what`).
    pub async fn stop(&self, what: &str) {
        let Some(Running { stop, mut task }) = self.0.lock().ok().and_then(|mut t| t.take()) else {
            return;
        };
        let _ = stop.send(());
        if tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
            tracing::error!(
                "{what}: a tick still running {STOP_WAIT:?} after shutdown began; cut off, what it held is lost"
            );
            task.abort();
            let _ = task.await;
        }
    }
}

/// Something a processor flushes on a timer and at shutdown.
#[async_trait::async_trait]
pub(crate) trait Flush: Send + Sync + 'static {
    async fn flush(&self) -> Result<(), infercol_pipelines::ConsumeError>;
}

impl Ticker {
    /// Flushes `target` every `every`; a failed flush is logged as `what`.
    pub fn flush_every<F: Flush>(&self, every: Duration, target: std::sync::Arc<F>, what: &'static str) {
        self.start(every, move || {
            let target = target.clone();
            async move {
                if let Err(e) = target.flush().await {
                    tracing::warn!("{what}: {e}");
                }
            }
        });
    }

    /// Stops the timer (a flush in progress finishes), then flushes what is left.
    pub async fn stop_and_flush<F: Flush>(
        &self,
        target: &F,
        what: &str,
    ) -> Result<(), infercol_pipelines::ComponentError> {
        self.stop(what).await;
        target
            .flush()
            .await
            .map_err(|e| infercol_pipelines::ComponentError::new(format!("{what} at shutdown: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn stop_between_ticks_ends_the_loop_at_once() {
        let ticker = Ticker::default();
        let ticks = Arc::new(AtomicUsize::new(0));
        let counted = ticks.clone();
        ticker.start(Duration::from_secs(10), move || {
            counted.fetch_add(1, Ordering::SeqCst);
            std::future::ready(())
        });
        tokio::time::sleep(Duration::from_secs(15)).await;
        let began = tokio::time::Instant::now();
        ticker.stop("test").await;
        assert_eq!(began.elapsed(), Duration::ZERO, "no wait for the next tick");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 1, "no tick after the stop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tick_that_never_ends_is_cut_off_after_the_bound() {
        let ticker = Ticker::default();
        ticker.start(Duration::from_secs(1), std::future::pending::<()>);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let began = tokio::time::Instant::now();
        ticker.stop("test").await;
        assert!(began.elapsed() >= STOP_WAIT, "waited the bound, then aborted");
    }
}
