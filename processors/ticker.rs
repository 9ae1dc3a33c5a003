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
