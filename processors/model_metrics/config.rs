//! `processors.model_metrics`: every rule of the metrics contract (section 2) is a key here, with the contract's
//! defaults.

use std::time::Duration;

use infercol_pipelines::ComponentConfig;
use infercol_pipelines::config::duration;
use serde::{Deserialize, Deserializer};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Temporality {
    #[default]
    Cumulative,
    Delta,
}

/// Where a dimension's value is read from.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    #[default]
    Resource,
    Span,
}

/// One label on every derived series: the first of `from` that is present wins, else `default`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Dimension {
    pub name: String,
    pub from: Vec<String>,
    #[serde(default)]
    pub source: Source,
    #[serde(default = "unknown")]
    pub default: String,
}

fn unknown() -> String {
    "unknown".into()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub fn default_dimensions() -> Vec<Dimension> {
    vec![
        Dimension {
            name: "model".into(),
            from: strings(&["service.name"]),
            source: Source::Resource,
            default: "unknown_service".into(),
        },
        Dimension {
            name: "deployment".into(),
            from: strings(&["deployment.id", "deployment.name", "service.version"]),
            source: Source::Resource,
            default: "unknown".into(),
        },
        Dimension {
            name: "environment".into(),
            from: strings(&["deployment.environment.name", "deployment.environment"]),
            source: Source::Resource,
            default: "unknown".into(),
        },
    ]
}

/// A span kind by its OTLP name.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl Kind {
    pub fn otlp(self) -> i32 {
        match self {
            Kind::Internal => 1,
            Kind::Server => 2,
            Kind::Client => 3,
            Kind::Producer => 4,
            Kind::Consumer => 5,
        }
    }
}

/// Which spans mean what (contract section 2).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpanRules {
    /// Span kinds that make a span a request span.
    pub request_span_kinds: Vec<Kind>,
    /// Span names whose duration is inference time.
    pub inference_span_names: Vec<String>,
    /// Attributes whose presence makes a span's duration inference time.
    pub inference_span_attributes: Vec<String>,
    /// Events on the request span whose time marks the first byte.
    pub first_byte_event_names: Vec<String>,
    /// Attributes holding the time to first byte/token in seconds.
    pub time_to_first_token_attributes: Vec<String>,
    /// Without an event or attribute, a request's first byte left with the whole response: use its duration.
    pub time_to_first_byte_falls_back_to_duration: bool,
    pub http_status_code_attributes: Vec<String>,
    /// Attributes naming the RPC system; `grpc` makes the protocol gRPC.
    pub rpc_system_attributes: Vec<String>,
    /// gRPC status: integer codes or names (`OK`, `UNAVAILABLE`).
    pub grpc_status_code_attributes: Vec<String>,
    pub websocket_close_code_attributes: Vec<String>,
    /// Events that mark a prediction exception (a 5xx when the span has no status code).
    pub exception_event_names: Vec<String>,
    pub request_size_attributes: Vec<String>,
    pub response_size_attributes: Vec<String>,
    pub input_token_attributes: Vec<String>,
    pub output_token_attributes: Vec<String>,
    /// Spans whose duration is time in the async queue (they start at enqueue and end at dequeue).
    pub async_queue_span_names: Vec<String>,
    /// Spans that put a request into the async queue.
    pub async_enqueue_span_names: Vec<String>,
    /// The attribute that ties an enqueue span to its queue span.
    pub message_id_attributes: Vec<String>,
    /// Spans whose end makes a replica active (its model is loaded).
    pub model_load_span_names: Vec<String>,
    /// Attributes holding the time a request waited inside the server (seconds or a duration string).
    pub queue_duration_attributes: Vec<String>,
    /// Server profiles: `[auto]` recognises every built-in one, a list picks some, `[]` turns them off.
    pub profiles: Vec<super::profiles::ProfileChoice>,
    /// How long a request waits for the rest of its spans (stages, a parent that may be local) before it is
    /// recorded.
    #[serde(with = "duration")]
    pub join_wait: Duration,
    /// How long a stage span waits for its request; then it is counted as `orphan_span`.
    #[serde(with = "duration")]
    pub orphan_wait: Duration,
    /// Spans waiting at most; past it the oldest traces are resolved early.
    pub max_pending_spans: usize,
}

impl Default for SpanRules {
    fn default() -> Self {
        SpanRules {
            request_span_kinds: vec![Kind::Server],
            inference_span_names: strings(&["predict", "inference", "infer", "compute"]),
            inference_span_attributes: strings(&["gen_ai.operation.name"]),
            first_byte_event_names: strings(&["first_byte", "first_token", "gen_ai.first_token"]),
            time_to_first_token_attributes: strings(&["gen_ai.latency.time_to_first_token"]),
            time_to_first_byte_falls_back_to_duration: true,
            http_status_code_attributes: strings(&["http.response.status_code", "http.status_code"]),
            rpc_system_attributes: strings(&["rpc.system", "rpc.system.name"]),
            grpc_status_code_attributes: strings(&[
                "rpc.grpc.status_code",
                "rpc.status_code",
                "rpc.response.status_code",
            ]),
            websocket_close_code_attributes: strings(&["websocket.close_code"]),
            exception_event_names: strings(&["exception"]),
            request_size_attributes: strings(&["http.request.body.size", "http.request_content_length"]),
            response_size_attributes: strings(&["http.response.body.size", "http.response_content_length"]),
            input_token_attributes: strings(&["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"]),
            output_token_attributes: strings(&["gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"]),
            async_queue_span_names: strings(&["async.queue"]),
            async_enqueue_span_names: strings(&["async.enqueue"]),
            message_id_attributes: strings(&["messaging.message.id"]),
            model_load_span_names: strings(&["model.load"]),
            queue_duration_attributes: strings(&["gen_ai.latency.time_in_queue"]),
            profiles: vec![super::profiles::ProfileChoice::Auto],
            join_wait: Duration::from_secs(5),
            orphan_wait: Duration::from_secs(300),
            max_pending_spans: 20_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExponentialConfig {
    /// Buckets per exported histogram point; the scale adapts so that the values seen fit.
    pub max_size: usize,
}

impl Default for ExponentialConfig {
    fn default() -> Self {
        ExponentialConfig { max_size: 160 }
    }
}

/// A bucket bound for the duration histograms: seconds as a number, or a duration string (`250ms`).
fn seconds_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Bound {
        Seconds(f64),
        Text(String),
    }
    Vec::<Bound>::deserialize(d)?
        .into_iter()
        .map(|b| match b {
            Bound::Seconds(s) => Ok(s),
            Bound::Text(t) => duration::parse(&t)
                .map(|d| d.as_secs_f64())
                .map_err(serde::de::Error::custom),
        })
        .collect()
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ExplicitConfig {
    /// Bounds of the duration histograms (seconds, or durations like `100ms`).
    #[serde(deserialize_with = "seconds_list")]
    pub buckets: Vec<f64>,
    /// Bounds of the size histograms, in bytes (default: powers of 4 from 64 B to 1 GiB).
    pub size_buckets: Vec<f64>,
    /// Bounds of the token histograms (default: powers of 2 from 1 to 65536).
    pub token_buckets: Vec<f64>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HistogramConfig {
    pub exponential: ExponentialConfig,
    /// Explicit buckets instead of exponential ones, when set.
    pub explicit: Option<ExplicitConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExemplarsConfig {
    pub enabled: bool,
}

impl Default for ExemplarsConfig {
    fn default() -> Self {
        ExemplarsConfig { enabled: true }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelMetricsConfig {
    /// How often derived metrics are emitted.
    #[serde(with = "duration")]
    pub flush_interval: Duration,
    /// The sliding window (by span end time) the quantiles summarise.
    #[serde(with = "duration")]
    pub quantile_window: Duration,
    pub quantiles: Vec<f64>,
    pub aggregation_temporality: Temporality,
    /// Series without new data for this long are dropped.
    #[serde(with = "duration")]
    pub metrics_expiration: Duration,
    /// Series per metric; points beyond go to one `otel_metric_overflow="true"` series.
    pub cardinality_limit: usize,
    /// Dimension values longer than this (bytes) are cut, end in `...`, and are counted (`label_truncated`).
    pub max_label_value_length: usize,
    pub histogram: HistogramConfig,
    pub dimensions: Vec<Dimension>,
    pub exemplars: ExemplarsConfig,
    pub spans: SpanRules,
    /// A queued request whose dequeue is never seen is dropped (and counted) after this long.
    #[serde(with = "duration")]
    pub queue_entry_ttl: Duration,
    /// A replica without telemetry for this long is gone.
    #[serde(with = "duration")]
    pub replica_ttl: Duration,
}

impl Default for ModelMetricsConfig {
    fn default() -> Self {
        ModelMetricsConfig {
            flush_interval: Duration::from_secs(10),
            quantile_window: Duration::from_secs(60),
            quantiles: vec![0.5, 0.9, 0.95, 0.99],
            aggregation_temporality: Temporality::Cumulative,
            metrics_expiration: Duration::from_secs(300),
            cardinality_limit: 10_000,
            max_label_value_length: infercol_pipelines::replicas::DEFAULT_MAX_LABEL_VALUE_LENGTH,
            histogram: HistogramConfig::default(),
            dimensions: default_dimensions(),
            exemplars: ExemplarsConfig::default(),
            spans: SpanRules::default(),
            queue_entry_ttl: Duration::from_secs(3600),
            replica_ttl: Duration::from_secs(120),
        }
    }
}

/// Labels the processor sets itself; a dimension must not take one of these names.
pub const RESERVED_LABELS: [&str; 5] = [
    "protocol",
    "status_code",
    "status_class",
    "quantile",
    "otel_metric_overflow",
];

impl ComponentConfig for ModelMetricsConfig {
    fn validate(&self) -> Result<(), String> {
        if self.flush_interval.is_zero() {
            return Err("flush_interval: must be more than 0".into());
        }
        if self.quantile_window < Duration::from_secs(1) {
            return Err("quantile_window: must be at least 1s".into());
        }
        for q in &self.quantiles {
            if !(0.0..=1.0).contains(q) {
                return Err(format!("quantiles: {q} is not between 0 and 1"));
            }
        }
        if self.cardinality_limit == 0 {
            return Err("cardinality_limit: must be at least 1".into());
        }
        if self.max_label_value_length < 16 {
            return Err("max_label_value_length: must be at least 16".into());
        }
        if self.histogram.exponential.max_size < 2 {
            return Err("histogram.exponential.max_size: must be at least 2".into());
        }
        if let Some(e) = &self.histogram.explicit {
            for (key, bounds) in [
                ("buckets", &e.buckets),
                ("size_buckets", &e.size_buckets),
                ("token_buckets", &e.token_buckets),
            ] {
                if bounds.windows(2).any(|w| w[0] >= w[1]) || bounds.iter().any(|b| !b.is_finite()) {
                    return Err(format!(
                        "histogram.explicit.{key}: bounds must be finite and strictly increasing"
                    ));
                }
            }
            if e.buckets.is_empty() {
                return Err("histogram.explicit.buckets: give the duration bounds, e.g. [5ms, 10ms, 25ms, ...]".into());
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, d) in self.dimensions.iter().enumerate() {
            let valid = d
                .name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && d.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("dimensions[{i}].name: `{}` is not a valid label name", d.name));
            }
            if RESERVED_LABELS.contains(&d.name.as_str()) {
                return Err(format!(
                    "dimensions[{i}].name: `{}` is set by the processor itself",
                    d.name
                ));
            }
            if !names.insert(d.name.clone()) {
                return Err(format!("dimensions[{i}].name: `{}` appears twice", d.name));
            }
            if d.from.is_empty() {
                return Err(format!("dimensions[{i}].from: list at least one attribute"));
            }
        }
        if self.queue_entry_ttl.is_zero() || self.replica_ttl.is_zero() {
            return Err("queue_entry_ttl and replica_ttl: must be more than 0".into());
        }
        if self.spans.join_wait.is_zero() || self.spans.orphan_wait < self.spans.join_wait {
            return Err("spans.join_wait: must be more than 0, and spans.orphan_wait at least as long".into());
        }
        if self.spans.max_pending_spans == 0 {
            return Err("spans.max_pending_spans: must be at least 1".into());
        }
        if self.spans.request_span_kinds.is_empty() {
            return Err("spans.request_span_kinds: list at least one kind, e.g. [server]".into());
        }
        Ok(())
    }
}
