//! A pipeline at run time: its workers take requests from its entry and push them through the processor chain.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

use crate::component::{ComponentError, Consumer, Health, Processor};
use crate::data::{Data, Signal};

use super::build::PipelineNode;
use super::export::{EXPORTER_DRAIN, RunningExporter};

/// A pipeline of the service: not started, or running in its task (which owns the processors from then on).
pub(crate) struct PipelineRun {
    pub id: String,
    signal: Signal,
    /// Until started: the entry, the chain and the head.
    idle: Option<(mpsc::Receiver<Data>, Arc<dyn Consumer>)>,
    chain: Vec<Arc<dyn Processor>>,
    /// How many processors, from the end of the chain, were started.
    started: usize,
    task: Option<JoinHandle<()>>,
    pub finished: bool,
}

impl PipelineRun {
    pub fn new(node: PipelineNode) -> PipelineRun {
        PipelineRun {
            id: node.id,
            signal: node.signal,
            idle: Some((node.rx, node.head)),
            chain: node.chain,
            started: 0,
            task: None,
            finished: false,
        }
    }

    /// Starts the processors from the exporters' end, then the workers.
    pub async fn start(&mut self, health: Arc<watch::Sender<Health>>) -> Result<(), ComponentError> {
        for processor in self.chain.iter().rev() {
            processor
                .start()
                .await
                .map_err(|e| ComponentError::new(format!("processors in pipeline {}: {e}", self.id)))?;
            self.started += 1;
        }
        let Some((rx, head)) = self.idle.take() else {
            return Ok(());
        };
        // A traces pipeline runs its processors on every thread of the runtime at once: requests are independent,
        // and model_metrics records into a shard per thread. Metrics and logs pipelines keep one worker, so that
        // what they carry (cumulative points, log records) stays in order.
        let workers = match self.signal {
            Signal::Traces => tokio::runtime::Handle::current().metrics().num_workers().max(1),
            _ => 1,
        };
        let chain = std::mem::take(&mut self.chain);
        self.task = Some(tokio::spawn(run(self.id.clone(), rx, head, chain, workers, health)));
        Ok(())
    }

    /// Waits for the pipeline to drain (its entry closes once every sender is gone), or stops what was started of
    /// it. After `deadline` the exporters' queues are abandoned so that a pipeline blocked on one is released.
    pub async fn stop(
        &mut self,
        deadline: tokio::time::Instant,
        released: &mut bool,
        exporters: &mut [RunningExporter],
    ) {
        self.finished = true;
        self.idle = None;
        let Some(task) = self.task.as_mut() else {
            let started = self.chain.len() - self.started;
            for processor in &self.chain[started..] {
                if let Err(e) = processor.shutdown().await {
                    tracing::warn!(pipeline = %self.id, "processor shutdown: {e}");
                }
            }
            self.chain.clear();
            return;
        };
        let mut finished = tokio::time::timeout_at(deadline, &mut *task).await;
        if finished.is_err() {
            if !*released {
                // A pipeline still waits for room in an exporter's queue: close the queues, so that what is left
                // is dropped (and logged) instead of holding shutdown to its deadline.
                tracing::error!(pipeline = %self.id, "still draining after {EXPORTER_DRAIN:?}; dropping what the exporters have not sent");
                for running in exporters.iter_mut() {
                    running.abandon();
                }
                *released = true;
            }
            finished = tokio::time::timeout(Duration::from_secs(5), &mut *task).await;
        }
        match finished {
            Ok(Err(e)) => tracing::error!(pipeline = %self.id, "pipeline task failed: {e}"),
            Err(_) => {
                task.abort();
                tracing::error!(pipeline = %self.id, "pipeline did not stop; aborted");
            }
            Ok(Ok(())) => {}
        }
    }
}

/// The pipeline's task: `workers` take requests until the entry closes, then the processors flush.
async fn run(
    name: String,
    rx: mpsc::Receiver<Data>,
    head: Arc<dyn Consumer>,
    chain: Vec<Arc<dyn Processor>>,
    workers: usize,
    health: Arc<watch::Sender<Health>>,
) {
    let rx = Arc::new(Mutex::new(rx));
    let mut running = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (head, rx, name) = (head.clone(), rx.clone(), name.clone());
        running.spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some(data) = next else { break };
                if let Err(e) = head.consume(data).await {
                    tracing::warn!(pipeline = %name, "data not delivered: {e}");
                }
            }
        });
    }
    drop(head);
    // A worker that panicked is gone (the others go on); the processors are shut down in any case.
    while let Some(done) = running.join_next().await {
        if let Err(e) = done {
            tracing::error!(pipeline = %name, "a pipeline worker failed: {e}");
            health.send_replace(Health::Failed(format!("pipeline {name}: a worker failed: {e}")));
        }
    }
    for processor in &chain {
        if let Err(e) = processor.shutdown().await {
            tracing::warn!(pipeline = %name, "processor shutdown: {e}");
        }
    }
    tracing::debug!(pipeline = %name, "pipeline drained");
}
