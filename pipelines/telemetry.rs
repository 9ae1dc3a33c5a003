//! The collector's own telemetry: items accepted and refused by receivers, passed through processors, and sent
//! or failed by exporters, exposed for Prometheus as the OpenTelemetry Collector names them (`otelcol_...`), so
//! dashboards made for the Collector work unchanged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::component::ComponentId;
use crate::data::Signal;

/// Label pairs of one series.
pub type Labels = Vec<(String, String)>;

struct Families {
    receiver_accepted: [Family<Labels, Counter>; 3],
    receiver_refused: [Family<Labels, Counter>; 3],
    processor_incoming: Family<Labels, Counter>,
    processor_outgoing: Family<Labels, Counter>,
    exporter_sent: [Family<Labels, Counter>; 3],
    exporter_failed: [Family<Labels, Counter>; 3],
    exporter_enqueue_failed: [Family<Labels, Counter>; 3],
    exporter_queue_size: Family<Labels, Gauge>,
    exporter_queue_capacity: Family<Labels, Gauge>,
}

/// A handle on the collector's own metrics; cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    registry: Arc<Mutex<Registry>>,
    families: Arc<Families>,
    /// Counter families that components register by name (registered once, shared by every instance).
    extra: Arc<Mutex<BTreeMap<String, Family<Labels, Counter>>>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

fn per_signal<M: Default + Clone>(
    registry: &mut Registry,
    help: &str,
    name: impl Fn(Signal) -> String,
) -> [Family<Labels, M>; 3]
where
    Family<Labels, M>: prometheus_client::registry::Metric,
{
    Signal::ALL.map(|s| {
        let family = Family::<Labels, M>::default();
        registry.register(name(s), help.replace("{items}", s.item_name()), family.clone());
        family
    })
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let mut r = Registry::default();
        let receiver_accepted = per_signal(
            &mut r,
            "Number of {items} successfully pushed into the pipeline.",
            |s| format!("otelcol_receiver_accepted_{}", s.item_name()),
        );
        let receiver_refused = per_signal(
            &mut r,
            "Number of {items} that could not be pushed into the pipeline.",
            |s| format!("otelcol_receiver_refused_{}", s.item_name()),
        );
        let exporter_sent = per_signal(&mut r, "Number of {items} successfully sent to destination.", |s| {
            format!("otelcol_exporter_sent_{}", s.item_name())
        });
        let exporter_failed = per_signal(
            &mut r,
            "Number of {items} in failed attempts to send to destination.",
            |s| format!("otelcol_exporter_send_failed_{}", s.item_name()),
        );
        let exporter_enqueue_failed = per_signal(
            &mut r,
            "Number of {items} dropped because the sending queue was full.",
            |s| format!("otelcol_exporter_enqueue_failed_{}", s.item_name()),
        );
        let processor_incoming = Family::default();
        r.register(
            "otelcol_processor_incoming_items",
            "Number of items passed to the processor.",
            processor_incoming.clone(),
        );
        let processor_outgoing = Family::default();
        r.register(
            "otelcol_processor_outgoing_items",
            "Number of items emitted from the processor.",
            processor_outgoing.clone(),
        );
        let exporter_queue_size = Family::default();
        r.register(
            "otelcol_exporter_queue_size",
            "Current size of the exporter's queue (requests).",
            exporter_queue_size.clone(),
        );
        let exporter_queue_capacity = Family::default();
        r.register(
            "otelcol_exporter_queue_capacity",
            "Fixed capacity of the exporter's queue (requests).",
            exporter_queue_capacity.clone(),
        );
        Telemetry {
            registry: Arc::new(Mutex::new(r)),
            extra: Arc::default(),
            families: Arc::new(Families {
                receiver_accepted,
                receiver_refused,
                processor_incoming,
                processor_outgoing,
                exporter_sent,
                exporter_failed,
                exporter_enqueue_failed,
                exporter_queue_size,
                exporter_queue_capacity,
            }),
        }
    }

    /// Counters for one receiver and transport (`grpc`, `http`, ...), resolved once so that counting is one add.
    pub fn receiver(&self, id: &ComponentId, transport: &str) -> ReceiverCounters {
        let labels: Labels = vec![
            ("receiver".into(), id.to_string()),
            ("transport".into(), transport.into()),
        ];
        let f = &self.families;
        ReceiverCounters {
            accepted: Signal::ALL.map(|s| f.receiver_accepted[s.index()].get_or_create(&labels).clone()),
            refused: Signal::ALL.map(|s| f.receiver_refused[s.index()].get_or_create(&labels).clone()),
        }
    }

    pub fn processor(&self, id: &ComponentId, pipeline: &str, signal: Signal) -> ProcessorCounters {
        let labels: Labels = vec![
            ("processor".into(), id.to_string()),
            ("pipeline".into(), pipeline.into()),
            ("otel_signal".into(), signal.as_str().into()),
        ];
        ProcessorCounters {
            incoming: self.families.processor_incoming.get_or_create(&labels).clone(),
            outgoing: self.families.processor_outgoing.get_or_create(&labels).clone(),
        }
    }

    pub fn exporter(&self, id: &ComponentId) -> ExporterCounters {
        let labels: Labels = vec![("exporter".into(), id.to_string())];
        let f = &self.families;
        ExporterCounters {
            sent: Signal::ALL.map(|s| f.exporter_sent[s.index()].get_or_create(&labels).clone()),
            failed: Signal::ALL.map(|s| f.exporter_failed[s.index()].get_or_create(&labels).clone()),
            enqueue_failed: Signal::ALL.map(|s| f.exporter_enqueue_failed[s.index()].get_or_create(&labels).clone()),
            queue_size: f.exporter_queue_size.get_or_create(&labels).clone(),
            queue_capacity: f.exporter_queue_capacity.get_or_create(&labels).clone(),
        }
    }

    /// A counter family of a component's own (`name` without the `_total` suffix, which is added), registered on
    /// first use; later calls with the same name share it.
    pub fn counter_family(&self, name: &str, help: &str) -> Family<Labels, Counter> {
        let mut extra = self.extra.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = extra.get(name) {
            return f.clone();
        }
        let family = Family::<Labels, Counter>::default();
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .register(name, help, family.clone());
        extra.insert(name.to_string(), family.clone());
        family
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

#[derive(Clone)]
pub struct ReceiverCounters {
    accepted: [Counter; 3],
    refused: [Counter; 3],
}

impl ReceiverCounters {
    pub fn accepted(&self, signal: Signal, items: usize) {
        self.accepted[signal.index()].inc_by(items as u64);
    }
    pub fn refused(&self, signal: Signal, items: usize) {
        self.refused[signal.index()].inc_by(items as u64);
    }
}

#[derive(Clone)]
pub struct ProcessorCounters {
    pub incoming: Counter,
    pub outgoing: Counter,
}

#[derive(Clone)]
pub struct ExporterCounters {
    sent: [Counter; 3],
    failed: [Counter; 3],
    enqueue_failed: [Counter; 3],
    pub queue_size: Gauge,
    pub queue_capacity: Gauge,
}

impl ExporterCounters {
    pub fn sent(&self, signal: Signal, items: usize) {
        self.sent[signal.index()].inc_by(items as u64);
    }
    pub fn failed(&self, signal: Signal, items: usize) {
        self.failed[signal.index()].inc_by(items as u64);
    }
    pub fn enqueue_failed(&self, signal: Signal, items: usize) {
        self.enqueue_failed[signal.index()].inc_by(items as u64);
    }
}
