//! A periodic task a processor starts and stops (the batch timeout, model_metrics' flush interval).

use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinHandle;

#[derive(Default)]
pub(crate) struct Ticker(Mutex<Option<JoinHandle<()>>>);

impl Ticker {
    /// Runs `tick` every `every`, the first time `every` from now; a slow tick delays the next.
    pub fn start<F, Fut>(&self, every: Duration, mut tick: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                tick().await;
            }
        });
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(task);
        }
    }

    /// Stops the task and waits until it is gone (a tick in progress is cut off).
    pub async fn stop(&self) {
        if let Some(task) = self.0.lock().ok().and_then(|mut t| t.take()) {
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

    /// Stops the timer, then flushes what is left.
    pub async fn stop_and_flush<F: Flush>(
        &self,
        target: &F,
        what: &str,
    ) -> Result<(), infercol_pipelines::ComponentError> {
        self.stop().await;
        target
            .flush()
            .await
            .map_err(|e| infercol_pipelines::ComponentError::new(format!("{what} at shutdown: {e}")))
    }
}
