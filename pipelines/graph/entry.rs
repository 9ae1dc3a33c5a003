//! A pipeline's entry (the bounded channel its receivers and connectors push into) and the fan-out to its
//! exporters.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::component::{ConsumeError, Consumer, Gate};
use crate::data::{Ack, Data};

/// Requests a pipeline's entry channel holds before receivers wait.
pub const PIPELINE_CHANNEL_CAPACITY: usize = 64;
/// How long a receiver waits for room in a full pipeline before refusing with a retryable answer.
pub const ENQUEUE_WAIT: Duration = Duration::from_secs(1);
/// How long a receiver waits for a request to reach a durable sending queue before refusing it (retryably).
pub const DURABLE_WAIT: Duration = Duration::from_secs(10);
/// The delay suggested to clients that were refused because a pipeline was full.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The gates of one pipeline, known once its processors exist.
pub(crate) type Gates = Arc<std::sync::OnceLock<Vec<Arc<dyn Gate>>>>;

#[derive(Clone)]
pub(crate) struct Entry {
    pub name: String,
    pub tx: mpsc::Sender<Data>,
    pub gates: Gates,
    /// An exporter of this pipeline keeps its queue on disk: the client's answer waits until the request is there.
    pub durable: bool,
}

/// The entry of one or more pipelines of a signal: receivers and connectors push here. A request enters all of them
/// or none: room is reserved in every pipeline first, so a refused request is not half-processed.
#[derive(Clone)]
pub(crate) struct PipelineInput {
    pub pipelines: Vec<Entry>,
}

impl PipelineInput {
    pub(crate) fn join(inputs: &[&PipelineInput]) -> PipelineInput {
        PipelineInput {
            pipelines: inputs.iter().flat_map(|i| i.pipelines.iter().cloned()).collect(),
        }
    }
}

#[async_trait]
impl Consumer for PipelineInput {
    async fn consume(&self, mut data: Data) -> Result<(), ConsumeError> {
        for entry in &self.pipelines {
            for gate in entry.gates.get().into_iter().flatten() {
                gate.admit()?;
            }
        }
        let deadline = tokio::time::Instant::now() + ENQUEUE_WAIT;
        let mut permits = Vec::with_capacity(self.pipelines.len());
        for Entry { name, tx, .. } in &self.pipelines {
            match tokio::time::timeout_at(deadline, tx.reserve()).await {
                Ok(Ok(permit)) => permits.push(permit),
                Ok(Err(_)) => {
                    return Err(ConsumeError::Retryable {
                        reason: "the collector is shutting down".to_string(),
                        retry_after: RETRY_AFTER,
                    });
                }
                Err(_) => {
                    return Err(ConsumeError::Retryable {
                        reason: format!("pipeline {name} is full"),
                        retry_after: RETRY_AFTER,
                    });
                }
            }
        }
        let durable = self.pipelines.iter().any(|e| e.durable);
        let kept = durable.then(|| {
            let (ack, kept) = Ack::new();
            data.add_acks(vec![ack]);
            kept
        });
        let last = permits.pop();
        for permit in permits {
            permit.send(data.clone());
        }
        if let Some(permit) = last {
            permit.send(data);
        }
        match kept {
            None => Ok(()),
            Some(kept) => match tokio::time::timeout(DURABLE_WAIT, kept).await {
                Ok(Ok(true)) => Ok(()),
                _ => Err(ConsumeError::Retryable {
                    reason: "the request could not be written to the sending queue in time".into(),
                    retry_after: RETRY_AFTER,
                }),
            },
        }
    }
}

/// Hands the same data to several consumers: clones (an `Arc` clone) for all but the last.
pub struct FanOut {
    consumers: Vec<Arc<dyn Consumer>>,
}

impl FanOut {
    /// A consumer for `consumers`: the one itself when there is only one.
    pub fn of(mut consumers: Vec<Arc<dyn Consumer>>) -> Arc<dyn Consumer> {
        if consumers.len() == 1 {
            return consumers.remove(0);
        }
        Arc::new(FanOut { consumers })
    }
}

#[async_trait]
impl Consumer for FanOut {
    async fn consume(&self, data: Data) -> Result<(), ConsumeError> {
        let Some((last, rest)) = self.consumers.split_last() else {
            return Ok(());
        };
        for c in rest {
            c.consume(data.clone()).await?;
        }
        last.consume(data).await
    }
}
