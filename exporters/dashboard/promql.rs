//! `source: prometheus`: the page's panels answered with PromQL over a Prometheus-compatible query API
//! (Prometheus, Mimir, Thanos, VictoriaMetrics), over the series that the `prometheus` and `prometheusremotewrite`
//! exporters write. Every gateway's page is then the same merged view, with the store's retention; the API and the
//! page are those of the embedded store.
//!
//! The queries, with `SEL` the selection's matchers and the configured ones, `STEP` the page's step and `INC(x)`
//! each step's increase of a counter, `x - last_over_time(x[10m] offset STEP)` where it did not go back (see
//! `increase` for resets):
//! - volume: `sum by (protocol, status_class, status_code) (INC(model_requests_total{SEL})) / STEP`;
//! - percentiles: `histogram_quantile(Q, sum(rate(FAMILY{SEL}[STEP + interval])))` over native histograms, else
//!   `histogram_quantile(Q, sum by (le) (INC(FAMILY_bucket{SEL})))` over classic buckets;
//! - gauges: `sum(GAUGE{SEL})`, by `state`, `hw_id` or `service_instance_id` where a panel splits them.
//!
//! Counters and classic buckets are read as INC, not `rate()`: an agent's deltas reach the store only when a
//! series changes, so a window often holds one sample and `rate()` would miss the first change after a pause; and
//! `rate()` extrapolates to the window's edges, which miscounts a burst. INC is `increase()` without
//! extrapolation: exact counts. A counter that went back (a restart) counts its new value, as `rate()` does.
//! Prometheus 2 cannot subtract native histograms, so their percentiles come from `rate()` (the extrapolation
//! scales every bucket alike and leaves the percentiles as they are).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use infercol_pipelines::ComponentError;
use infercol_pipelines::config::duration;
use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::panels::{self, Choice, QUANTILES, Query, Values, round, series};

/// `exporters.dashboard.prometheus`: where `source: prometheus` reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusSourceConfig {
    /// The query API's base, e.g. `http://prometheus:9090` or `http://mimir/prometheus` (`/api/v1/...` is added).
    pub url: String,
    /// Sent with every query (a tenant's `X-Scope-OrgID`, an `Authorization`).
    pub headers: BTreeMap<String, String>,
    pub tls: crate::otlp::TlsConfig,
    /// Label matchers added to every selector, e.g. `cluster="eu-1"` or `job=~"gateway-.*"`.
    pub matchers: Vec<String>,
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// How often the series are written (the exporters' flush or the scrape interval): the finest step, and what
    /// the native histograms' rate windows add to the step.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// The exporters' `namespace`, when they were given one.
    pub namespace: String,
    /// The largest answer read from the store, per query.
    pub max_response_mib: usize,
}

impl Default for PrometheusSourceConfig {
    fn default() -> Self {
        PrometheusSourceConfig {
            url: String::new(),
            headers: BTreeMap::new(),
            tls: Default::default(),
            matchers: Vec::new(),
            timeout: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            namespace: String::new(),
            max_response_mib: 16,
        }
    }
}

impl PrometheusSourceConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(format!(
                "prometheus.url: `{}` must be a URL such as http://127.0.0.1:9090",
                self.url
            ));
        }
        for (i, m) in self.matchers.iter().enumerate() {
            check_matcher(m).map_err(|e| format!("prometheus.matchers[{i}]: `{m}`: {e}"))?;
        }
        if self.timeout.is_zero() {
            return Err("prometheus.timeout: must be more than 0".into());
        }
        if self.interval < Duration::from_secs(1) {
            return Err("prometheus.interval: must be at least 1s".into());
        }
        if !(1..=1024).contains(&self.max_response_mib) {
            return Err("prometheus.max_response_mib: must be between 1 and 1024".into());
        }
        if !self.namespace.is_empty() && !is_label_name(&self.namespace) {
            return Err(format!(
                "prometheus.namespace: `{}` is not a metric name prefix",
                self.namespace
            ));
        }
        Ok(())
    }
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One PromQL label matcher: `name`, `=`, `!=`, `=~` or `!~`, and a double-quoted string. Checked here so that a
/// matcher cannot end the selector and add to the query.
fn check_matcher(m: &str) -> Result<(), &'static str> {
    let at = m.find(['=', '!']).ok_or("not like name=\"value\"")?;
    if !is_label_name(m[..at].trim()) {
        return Err("the label name is not a Prometheus label name");
    }
    let rest = &m[at..];
    let value = ["=~", "!~", "!=", "="]
        .iter()
        .find_map(|op| rest.strip_prefix(op))
        .ok_or("the operator is not =, !=, =~ or !~")?
        .trim();
    let inner = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .ok_or("the value is not a double-quoted string")?;
    let mut escaped = false;
    for c in inner.chars() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return Err("a quote inside the value is not escaped"),
            _ => {}
        }
    }
    if escaped {
        return Err("the value ends in a lone backslash");
    }
    Ok(())
}

/// A PromQL string literal.
fn quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    crate::prometheus::text::escape_value(v, &mut out);
    out.push('"');
    out
}

/// Why a page could not be answered: the query's fault (400), or the store's (502).
#[derive(Debug)]
pub enum Failure {
    Query(String),
    Store(String),
}

/// The steps of a page: evaluation times `first + i * step` (seconds), each the end of its step.
#[derive(Clone, Copy)]
struct Steps {
    first: i64,
    step: i64,
    bins: usize,
}

impl Steps {
    fn index(&self, t: f64) -> Option<usize> {
        let i = ((t - self.first as f64) / self.step as f64).round();
        (i >= 0.0 && (i as usize) < self.bins).then_some(i as usize)
    }
}

/// Lines of a range query: each series' labels and its value at every step.
type Lines = Vec<(BTreeMap<String, String>, Values)>;

/// Queries answered at once per page: a store has a few query slots (Prometheus 20), shared with everyone.
const PARALLEL_QUERIES: usize = 4;

/// How far back INC looks for the previous sample of a counter (see the module's comment).
const PREVIOUS_LOOKBACK: &str = "10m";

pub struct Source {
    config: PrometheusSourceConfig,
    client: reqwest::Client,
    base: String,
    /// The configured matchers, joined.
    extra: String,
}

impl Source {
    pub fn new(config: &PrometheusSourceConfig) -> Result<Source, ComponentError> {
        Ok(Source {
            client: crate::http_client(&config.headers, &config.tls, config.timeout)?,
            base: config.url.trim_end_matches('/').to_string(),
            extra: config.matchers.join(","),
            config: config.clone(),
        })
    }

    fn name(&self, family: &str) -> String {
        if self.config.namespace.is_empty() {
            family.to_string()
        } else {
            format!("{}_{family}", self.config.namespace)
        }
    }

    /// `family{matchers}` with the configured matchers added.
    fn select(&self, family: &str, matchers: &str) -> String {
        let all: Vec<&str> = [matchers, self.extra.as_str()]
            .into_iter()
            .filter(|m| !m.is_empty())
            .collect();
        format!("{}{{{}}}", self.name(family), all.join(","))
    }

    /// One call of the query API, its `data`; the answer is read up to `max_response_mib`.
    async fn call(&self, path: &str, form: &[(&str, String)], post: bool) -> Result<Json, String> {
        let encoded = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter().map(|(k, v)| (*k, v.as_str())))
            .finish();
        let url = format!("{}{path}", self.base);
        let request = if post {
            self.client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(encoded)
        } else {
            self.client.get(format!("{url}?{encoded}"))
        };
        let mut response = request.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let limit = self.config.max_response_mib << 20;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("{url}: {e}"))? {
            if body.len() + chunk.len() > limit {
                return Err(format!(
                    "{url}: the answer is over max_response_mib ({} MiB)",
                    self.config.max_response_mib
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let mut answer: Json = serde_json::from_slice(&body)
            .map_err(|e| format!("{url}: HTTP {status}, not the query API's JSON: {e}"))?;
        if answer["status"] != "success" {
            return Err(format!(
                "{url}: HTTP {status}: {}: {}",
                answer["errorType"].as_str().unwrap_or("error"),
                answer["error"].as_str().unwrap_or("no message")
            ));
        }
        Ok(answer["data"].take())
    }

    /// A range query over the page's steps.
    async fn range(&self, promql: String, steps: Steps) -> Result<Lines, String> {
        let last = steps.first + (steps.bins as i64 - 1) * steps.step;
        let form = [
            ("query", promql),
            ("start", steps.first.to_string()),
            ("end", last.to_string()),
            ("step", steps.step.to_string()),
        ];
        let data = self.call("/api/v1/query_range", &form, true).await?;
        let mut out = Vec::new();
        for result in data["result"].as_array().into_iter().flatten() {
            let labels: BTreeMap<String, String> = result["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect();
            let mut values = vec![None; steps.bins];
            for pair in result["values"].as_array().into_iter().flatten() {
                let (Some(t), Some(v)) = (pair[0].as_f64(), pair[1].as_str()) else {
                    continue;
                };
                if let (Some(i), Ok(v)) = (steps.index(t), v.parse::<f64>())
                    && v.is_finite()
                {
                    values[i] = Some(v);
                }
            }
            out.push((labels, values));
        }
        Ok(out)
    }

    /// An instant query's results, as the query API gives them.
    async fn instant(&self, promql: String, at: i64) -> Result<Vec<Json>, String> {
        let mut data = self
            .call("/api/v1/query", &[("query", promql), ("time", at.to_string())], true)
            .await?;
        Ok(match data["result"].take() {
            Json::Array(results) => results,
            _ => Vec::new(),
        })
    }

    /// The body of `/api/labels`: the filters' values over the retention, and whether any model series is there.
    pub async fn labels(&self, now_ms: i64, retention_ms: i64) -> Result<Json, String> {
        // The end a minute ahead: the newest samples are within the current second, and clocks differ.
        let (end, start) = (now_ms / 1000 + 60, (now_ms - retention_ms) / 1000);
        let prefix = self.name("model_");
        let matcher = if self.extra.is_empty() {
            format!("{{__name__=~\"{prefix}.+\"}}")
        } else {
            format!("{{__name__=~\"{prefix}.+\",{}}}", self.extra)
        };
        let mut labels = serde_json::Map::new();
        for name in super::store::FILTERS {
            let form = [
                ("match[]", matcher.clone()),
                ("start", start.to_string()),
                ("end", end.to_string()),
            ];
            let values = self.call(&format!("/api/v1/label/{name}/values"), &form, false).await?;
            labels.insert(name.into(), values);
        }
        let empty = labels
            .get("model")
            .and_then(|v| v.as_array())
            .is_none_or(|v| v.is_empty());
        Ok(json!({ "empty": empty, "source": "prometheus", "labels": labels }))
    }
}

/// Each step's increase of a counter (see the module's comment), read from its samples without extrapolation:
/// - no reset in the step: the value at its end minus the last before it;
/// - a reset inside the step: what it counted up to its peak before the reset, plus its value at the end;
/// - a reset between steps, or a series new in the step: its value at the end.
fn increase(selector: &str, step: i64) -> String {
    let previous = format!("last_over_time({selector}[{PREVIOUS_LOOKBACK}] offset {step}s)");
    let reset = format!("resets({selector}[{step}s]) > 0");
    let peak = format!("max_over_time({selector}[{step}s])");
    format!(
        "((({selector} - {previous}) >= 0 unless {reset}) or (({peak} - {previous} + {selector}) and {reset}) or (({peak} + {selector}) and {reset}) or {selector})"
    )
}

/// The query of a percentile panel: p50..p99 in one answer, told apart by a `quantile` label.
fn quantile_query(source: &Source, family: &str, sel: &str, steps: Steps) -> String {
    let window = steps.step + source.config.interval.as_secs().max(1) as i64;
    let native = format!("sum(rate({}[{window}s]))", source.select(family, sel));
    let classic = format!(
        "sum by (le) ({})",
        increase(&source.select(&format!("{family}_bucket"), sel), steps.step)
    );
    QUANTILES
        .iter()
        .map(|(q, label)| {
            format!(
                "label_replace(histogram_quantile({q}, {native}) or histogram_quantile({q}, {classic}), \"quantile\", \"{label}\", \"\", \"\")"
            )
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

/// The widest bucket of any one layout, `(upper - lower) / lower`: how far a percentile interpolated in a bucket
/// can be from the true value. Classic layouts come as series of `le` bounds (one per model), native histograms
/// with their buckets' bounds.
fn layout_bound(results: &[Json]) -> Option<f64> {
    let mut layouts: BTreeMap<Vec<(&String, &str)>, Vec<f64>> = BTreeMap::new();
    let mut widest: Option<f64> = None;
    let mut widen = |gap: f64| widest = Some(widest.map_or(gap, |w| w.max(gap)));
    for r in results {
        let Some(labels) = r["metric"].as_object() else {
            continue;
        };
        if let Some(le) = labels.get("le").and_then(|le| le.as_str()?.parse::<f64>().ok()) {
            let key = labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k, v.as_str().unwrap_or_default()))
                .collect();
            layouts.entry(key).or_default().push(le);
        }
        // A native histogram's buckets: [boundary rule, lower, upper, count].
        for b in r["histogram"][1]["buckets"].as_array().into_iter().flatten() {
            let bound = |i: usize| b[i].as_str().and_then(|v| v.parse::<f64>().ok());
            if let (Some(lower), Some(upper)) = (bound(1), bound(2))
                && lower > 0.0
                && upper.is_finite()
            {
                widen((upper - lower) / lower);
            }
        }
    }
    for mut bounds in layouts.into_values() {
        bounds.retain(|b| b.is_finite() && *b > 0.0);
        bounds.sort_by(f64::total_cmp);
        if let Some(gap) = bounds.windows(2).map(|w| (w[1] - w[0]) / w[0]).reduce(f64::max) {
            widen(gap);
        }
    }
    widest
}

/// Adds up the lines of a query by one label (or into one line, by `""`).
fn by_label(lines: &Lines, label: &str, bins: usize) -> BTreeMap<String, Values> {
    let mut out: BTreeMap<String, Values> = BTreeMap::new();
    for (labels, values) in lines {
        let key = labels.get(label).cloned().unwrap_or_default();
        panels::add_into(out.entry(key).or_insert_with(|| vec![None; bins]), values);
    }
    out
}

fn latest(values: &Values) -> Option<(usize, f64)> {
    values.iter().enumerate().rev().find_map(|(i, v)| v.map(|v| (i, v)))
}

/// What each range query of a page answers, besides the percentile panels; its answer is found by the line.
#[derive(Clone, Copy)]
enum Line {
    Volume,
    ReplicasByState,
    ReplicaStates,
    ReplicaCpu,
    ReplicaMemory,
    ReplicaGpuMemory,
    ReplicaRequests,
    ProcessCpu,
    ProcessMemory,
    HostCpu,
    HostMemory,
    MemoryLimit,
    GpuBusy,
    GpuMemory,
    GpuMemoryLimit,
    SelectionGpuMemory,
    AsyncQueue,
    ServerQueue,
}

/// How many lines a page's gauge and count queries answer.
const LINES: usize = Line::ServerQueue as usize + 1;

/// The panels' queries: one per `Line` (in its order), and one per percentile panel (in `percentile_families`').
struct Plan {
    queries: Vec<String>,
    percentiles: Vec<String>,
    layouts: Vec<String>,
    /// Each replica's p95 over the whole range (an instant query at its end).
    replica_p95: String,
}

/// The selection's matchers: model, environment, deployment and replica, as the exporters name their labels.
fn selection(q: &Query) -> String {
    let sel: Vec<String> = super::store::FILTERS
        .iter()
        .chain(&["service_instance_id"])
        .zip([&q.model, &q.environment, &q.deployment, &q.replica])
        .filter_map(|(k, v)| {
            v.as_deref()
                .filter(|v| !v.is_empty())
                .map(|v| format!("{k}={}", quote(v)))
        })
        .collect();
    sel.join(",")
}

/// The queries of the model panels' counts and gauges, and of the replica table.
fn model_queries(source: &Source, sel: &str, steps: Steps) -> Vec<(Line, String)> {
    let s = |family: &str| source.select(family, sel);
    vec![
        (
            Line::Volume,
            format!(
                "sum by (protocol, status_class, status_code) ({})",
                increase(&s("model_requests_total"), steps.step)
            ),
        ),
        (
            Line::ReplicasByState,
            format!("sum by (state) ({})", s("model_replicas")),
        ),
        (
            Line::ReplicaStates,
            format!(
                "max by (service_instance_id, state) ({})",
                s("model_replica_state_since_seconds")
            ),
        ),
        (
            Line::ReplicaCpu,
            format!("sum by (service_instance_id) ({})", s("process_cpu_utilization_ratio")),
        ),
        (
            Line::ReplicaMemory,
            format!("sum by (service_instance_id) ({})", s("process_memory_usage_bytes")),
        ),
        (
            Line::ReplicaGpuMemory,
            format!("sum by (service_instance_id) ({})", s("process_gpu_memory_usage_bytes")),
        ),
        (
            Line::ReplicaRequests,
            format!(
                "sum by (service_instance_id) ({})",
                increase(&s("model_replica_requests_total"), steps.step)
            ),
        ),
    ]
}

/// The queries of the CPU, memory and GPU panels (the selection's processes, else the host) and the queue sizes.
fn resource_queries(source: &Source, sel: &str) -> Vec<(Line, String)> {
    let with = |extra: &str| {
        if sel.is_empty() {
            extra.to_string()
        } else {
            format!("{sel},{extra}")
        }
    };
    let s = |family: &str| source.select(family, sel);
    let host = |family: &str| source.select(family, "");
    let held = if sel.is_empty() {
        String::new()
    } else {
        format!(
            " and on (hw_id) group by (hw_id) ({})",
            s("process_gpu_memory_usage_bytes")
        )
    };
    vec![
        (
            Line::ProcessCpu,
            format!(
                "sum({})",
                source.select("process_cpu_utilization_ratio", &with("model!=\"\""))
            ),
        ),
        (
            Line::ProcessMemory,
            format!(
                "sum({})",
                source.select("process_memory_usage_bytes", &with("model!=\"\""))
            ),
        ),
        (Line::HostCpu, format!("sum({})", host("system_cpu_utilization_ratio"))),
        (
            Line::HostMemory,
            format!(
                "sum({})",
                source.select("system_memory_usage_bytes", "system_memory_state=~\"used|\"")
            ),
        ),
        (Line::MemoryLimit, format!("sum({})", host("system_memory_limit_bytes"))),
        (
            Line::GpuBusy,
            format!(
                "sum by (hw_id, hw_gpu_index) ({}){held}",
                host("hw_gpu_utilization_ratio")
            ),
        ),
        (
            Line::GpuMemory,
            format!(
                "sum by (hw_id, hw_gpu_index) ({}){held}",
                host("hw_gpu_memory_usage_bytes")
            ),
        ),
        (
            Line::GpuMemoryLimit,
            format!("sum by (hw_id) ({}){held}", host("hw_gpu_memory_limit_bytes")),
        ),
        (
            Line::SelectionGpuMemory,
            format!("sum({})", s("process_gpu_memory_usage_bytes")),
        ),
        (Line::AsyncQueue, format!("sum({})", s("model_async_queue_size"))),
        (Line::ServerQueue, format!("sum({})", s("model_queue_size"))),
    ]
}

fn plan(source: &Source, q: &Query, choice: &Choice, steps: Steps) -> Plan {
    let sel = selection(q);
    let families = percentile_families(choice);
    let mut queries = model_queries(source, &sel, steps);
    queries.extend(resource_queries(source, &sel));
    queries.sort_by_key(|(line, _)| *line as usize);
    debug_assert!(queries.iter().enumerate().all(|(i, (line, _))| *line as usize == i) && queries.len() == LINES);
    let queries = queries.into_iter().map(|(_, q)| q).collect();
    let percentiles = families
        .iter()
        .map(|(_, f)| quantile_query(source, f, &sel, steps))
        .collect();
    let (layouts, replica_p95) = instants(source, &families, &sel, steps.bins as i64 * steps.step);
    Plan {
        queries,
        percentiles,
        layouts,
        replica_p95,
    }
}

/// The instant queries at the range's end: each percentile panel's bucket layouts, and each replica's p95.
fn instants(source: &Source, families: &[(&str, String)], sel: &str, range: i64) -> (Vec<String>, String) {
    let s = |family: &str| source.select(family, sel);
    // Over the whole range: classic buckets as one step's increase (new series counted from zero); native ones
    // by increase(), whose extrapolation scales every bucket alike and leaves the p95 as it is.
    let replica_p95 = format!(
        "histogram_quantile(0.95, sum by (service_instance_id) (increase({native}[{range}s]))) or histogram_quantile(0.95, sum by (service_instance_id, le) ({classic}))",
        native = s("model_replica_request_duration_seconds"),
        classic = increase(&s("model_replica_request_duration_seconds_bucket"), range),
    );
    let layouts = families
        .iter()
        .map(|(_, f)| {
            format!(
                // Native histograms as they are last (Prometheus 2 does not take their last_over_time).
                "group by (le, model, deployment, environment) (last_over_time({}[{range}s])) or {}",
                s(&format!("{f}_bucket")),
                s(f)
            )
        })
        .collect();
    (layouts, replica_p95)
}

/// The percentile panels' ids and Prometheus families, in the order of the page.
fn percentile_families(choice: &Choice) -> [(&'static str, String); 4] {
    let family = |otlp: &str| otlp.replace('.', "_");
    [
        ("latency", family(choice.latency)),
        ("size", family(choice.size)),
        ("queue_time", "model_async_queue_duration_seconds".into()),
        ("server_queue_time", "model_queue_duration_seconds".into()),
    ]
}

/// The lines of every query of a plan, and each percentile panel's layout bound.
struct Answers {
    /// By `Line`.
    lines: Vec<Lines>,
    /// By percentile panel.
    percentiles: Vec<Lines>,
    bounds: Vec<Option<f64>>,
    replica_p95: Result<BTreeMap<String, f64>, String>,
}

async fn run(source: &Source, plan: Plan, steps: Steps) -> Result<Answers, String> {
    let all = plan.queries.into_iter().chain(plan.percentiles);
    let mut lines = futures::stream::iter(all.map(|q| source.range(q, steps)))
        .buffered(PARALLEL_QUERIES)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let percentiles = lines.split_off(LINES);
    let at = steps.first + (steps.bins as i64 - 1) * steps.step;
    let bounds = futures::stream::iter(plan.layouts.into_iter().map(|q| source.instant(q, at)))
        .buffered(PARALLEL_QUERIES)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|r| r.map(|series| layout_bound(&series)))
        .collect::<Result<Vec<_>, _>>()?;
    // A column of the table: a store that refuses it (too many samples over a long range) leaves it out, not
    // the page.
    let replica_p95 = match source.instant(plan.replica_p95, at).await {
        Ok(results) => Ok(results
            .iter()
            .filter_map(|r| {
                let id = r["metric"]["service_instance_id"].as_str()?.to_string();
                let v: f64 = r["value"][1].as_str()?.parse().ok()?;
                v.is_finite().then_some((id, v))
            })
            .collect()),
        Err(e) => Err(e),
    };
    Ok(Answers {
        lines,
        percentiles,
        bounds,
        replica_p95,
    })
}

/// The panels from the answers, in the shapes of the embedded store's (see `panels`).
fn assemble(answers: Answers, choice: Choice, steps: Steps) -> Vec<Json> {
    let bins = steps.bins;
    let Answers {
        lines,
        percentiles: percentile_lines,
        bounds,
        replica_p95,
    } = answers;
    let one = |line: Line| by_label(&lines[line as usize], "", bins).remove("");
    let step_s = steps.step as f64;
    // Volume: each step's increase, per second.
    let mut groups: BTreeMap<(String, String), Values> = BTreeMap::new();
    for (labels, values) in &lines[Line::Volume as usize] {
        let get = |k: &str| labels.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let rates: Values = values.iter().map(|v| v.map(|v| v / step_s)).collect();
        panels::add_into(
            groups
                .entry(panels::status_group(
                    get("protocol"),
                    get("status_class"),
                    get("status_code"),
                ))
                .or_insert_with(|| vec![None; bins]),
            &rates,
        );
    }
    let mut list = vec![panels::volume_panel(&groups, bins)];
    let titles = [
        ("Response time", "s", Some(choice.latency_json.clone())),
        (
            "Request and response size",
            choice.size_unit,
            Some(choice.size_json.clone()),
        ),
        ("Time in async queue", "s", None),
        ("Time in server queue", "s", None),
    ];
    let percentiles: Vec<Json> = percentile_families(&choice)
        .iter()
        .zip(titles)
        .enumerate()
        .map(|(k, ((id, _), (title, unit, pick)))| {
            percentile_panel(&percentile_lines[k], bounds[k], id, title, unit, pick)
        })
        .collect();
    let mut percentiles = percentiles.into_iter();
    let mut next = || percentiles.next().unwrap_or_default();
    let (latency, size, queue_time, server_queue_time) = (next(), next(), next(), next());
    list.push(latency);
    list.push(size);
    list.push(replicas(&lines, steps, &replica_p95));
    list.push(cpu_memory([
        one(Line::ProcessCpu),
        one(Line::ProcessMemory),
        one(Line::HostCpu),
        one(Line::HostMemory),
        one(Line::MemoryLimit),
    ]));
    let at = |line: Line| &lines[line as usize];
    list.push(gpu(
        at(Line::GpuBusy),
        at(Line::GpuMemory),
        at(Line::GpuMemoryLimit),
        one(Line::SelectionGpuMemory),
    ));
    list.push(queue_time);
    list.push(queue_size("queue_size", "Async queue size", one(Line::AsyncQueue)));
    list.push(server_queue_time);
    list.push(queue_size(
        "server_queue_size",
        "Server queue size",
        one(Line::ServerQueue),
    ));
    for panel in &mut list {
        let model_panel = !matches!(panel["id"].as_str(), Some("cpu_memory") | Some("gpu"));
        if model_panel {
            panel["sources"] = json!(["prometheus"]);
        }
    }
    list
}

fn percentile_panel(lines: &Lines, bound: Option<f64>, id: &str, title: &str, unit: &str, pick: Option<Json>) -> Json {
    let list: Vec<Json> = QUANTILES
        .iter()
        .filter_map(|(_, label)| {
            let (_, values) = lines
                .iter()
                .find(|(l, _)| l.get("quantile").map(String::as_str) == Some(*label))?;
            Some(series(label, values, json!({})))
        })
        .collect();
    let mut panel = json!({ "id": id, "title": title, "unit": unit, "series": list, "combined": 1 });
    if let Some(pick) = pick {
        panel["choice"] = pick;
    }
    if let Some(bound) = bound {
        panel["relative_error"] = json!(round(bound));
    }
    panel
}

fn replicas(lines: &[Lines], steps: Steps, p95: &Result<BTreeMap<String, f64>, String>) -> Json {
    let bins = steps.bins;
    let (p95, p95_error) = match p95 {
        Ok(p95) => (p95.clone(), None),
        Err(e) => (BTreeMap::new(), Some(format!("p95 by replica: {e}"))),
    };
    let by_state = by_label(&lines[Line::ReplicasByState as usize], "state", bins);
    let list: Vec<Json> = ["active", "starting"]
        .iter()
        .filter_map(|state| by_state.get(*state).map(|v| series(state, v, json!({}))))
        .collect();
    // Per replica, the state whose series is the latest: a replica that became active has left starting.
    let mut states: BTreeMap<String, (usize, String, f64)> = BTreeMap::new();
    for (labels, values) in &lines[Line::ReplicaStates as usize] {
        let (Some(id), Some(state), Some((i, since))) =
            (labels.get("service_instance_id"), labels.get("state"), latest(values))
        else {
            continue;
        };
        if states
            .get(id)
            .is_none_or(|(at, _, s)| i > *at || (i == *at && since > *s))
        {
            states.insert(id.clone(), (i, state.clone(), since));
        }
    }
    let per = |line: Line| -> BTreeMap<String, f64> {
        by_label(&lines[line as usize], "service_instance_id", bins)
            .into_iter()
            .filter_map(|(id, v)| Some((id, latest(&v)?.1)))
            .collect()
    };
    let (cpu, memory, gpu_memory) = (
        per(Line::ReplicaCpu),
        per(Line::ReplicaMemory),
        per(Line::ReplicaGpuMemory),
    );
    let seconds = (steps.bins as i64 * steps.step) as f64;
    let rates: BTreeMap<String, f64> = by_label(&lines[Line::ReplicaRequests as usize], "service_instance_id", bins)
        .into_iter()
        .map(|(id, v)| (id, v.iter().flatten().sum::<f64>()))
        .collect();
    let table: Vec<Json> = states
        .into_iter()
        .map(|(id, (_, state, since))| {
            json!({
                "id": id,
                "state": state,
                "since": since,
                "requests_per_s": rates.get(&id).map(|v| round(v / seconds)),
                "p95": p95.get(&id).map(|v| round(*v)),
                "cpu": cpu.get(&id).map(|v| round(v * 100.0)),
                "memory": memory.get(&id).copied(),
                "gpu_memory": gpu_memory.get(&id).copied(),
            })
        })
        .collect();
    let mut panel = json!({ "id": "replicas", "title": "Replicas", "unit": "", "series": list, "table": table });
    if let Some(e) = p95_error {
        panel["error"] = json!(e);
    }
    panel
}

/// The selection's replica processes when any report, else the host: `[replica CPU, replica memory, host CPU,
/// host memory, memory limit]`.
fn cpu_memory(lines: [Option<Values>; 5]) -> Json {
    let [replica_cpu, replica_memory, host_cpu, host_memory, limit] = lines;
    let (cpu, memory, source) = if replica_cpu.is_none() && replica_memory.is_none() {
        (host_cpu, host_memory, "host")
    } else {
        (replica_cpu, replica_memory, "replicas")
    };
    let mut list = Vec::new();
    if let Some(v) = cpu {
        let percent: Values = v.iter().map(|x| x.map(|r| r * 100.0)).collect();
        list.push(series("CPU", &percent, json!({ "unit": "%", "axis": "left" })));
    }
    if let Some(v) = memory {
        let limit = limit.and_then(|l| l.iter().flatten().copied().reduce(f64::max));
        list.push(series(
            "memory",
            &v,
            json!({ "unit": "By", "axis": "right", "limit": limit }),
        ));
    }
    json!({ "id": "cpu_memory", "title": "CPU and memory", "unit": "%", "right_unit": "By", "source": source, "series": list })
}

fn gpu(busy: &Lines, memory: &Lines, limits: &Lines, selection: Option<Values>) -> Json {
    let name = |labels: &BTreeMap<String, String>| -> String {
        let id = labels.get("hw_id").cloned().unwrap_or_default();
        let index = labels.get("hw_gpu_index").filter(|i| !i.is_empty()).cloned();
        format!("GPU {}", index.unwrap_or_else(|| id.chars().take(12).collect()))
    };
    let mut list = Vec::new();
    for (labels, v) in busy {
        let percent: Values = v.iter().map(|x| x.map(|r| r * 100.0)).collect();
        list.push(series(
            &format!("{} busy", name(labels)),
            &percent,
            json!({ "unit": "%", "axis": "left" }),
        ));
    }
    for (labels, v) in memory {
        let limit = limits
            .iter()
            .find(|(l, _)| l.get("hw_id") == labels.get("hw_id"))
            .and_then(|(_, l)| l.iter().flatten().copied().reduce(f64::max));
        list.push(series(
            &format!("{} memory", name(labels)),
            v,
            json!({ "unit": "By", "axis": "right", "limit": limit }),
        ));
    }
    if let Some(v) = selection {
        list.push(series(
            "selection's memory",
            &v,
            json!({ "unit": "By", "axis": "right" }),
        ));
    }
    json!({ "id": "gpu", "title": "GPU usage and memory", "unit": "%", "right_unit": "By", "series": list })
}

fn queue_size(id: &str, title: &str, values: Option<Values>) -> Json {
    let list: Vec<Json> = values.map(|v| series("waiting", &v, json!({}))).into_iter().collect();
    json!({ "id": id, "title": title, "unit": "", "series": list })
}

/// The body of `GET /api/panels`, answered by the store.
pub async fn panels(
    source: &Source,
    q: &Query,
    now_ms: i64,
    retention_ms: i64,
    thresholds: &super::considerations::ConsiderationsConfig,
) -> Result<Json, Failure> {
    let (from, to) = panels::span(q, now_ms, retention_ms).map_err(Failure::Query)?;
    let choice = Choice::of(
        q.latency.as_deref().unwrap_or("request"),
        q.size.as_deref().unwrap_or("request"),
    )
    .map_err(Failure::Query)?;
    let resolution = source.config.interval.as_millis() as i64;
    // About 180 steps over the span, as the embedded store's, never finer than the series are written.
    let step = (((to - from) / 180).max(resolution) + 999) / 1000 * 1000;
    let end = (to / step + 1) * step;
    let bins = ((end - from) / step).max(1) as usize;
    let start = end - bins as i64 * step;
    let steps = Steps {
        first: (start + step) / 1000,
        step: step / 1000,
        bins,
    };
    let times: Vec<f64> = (0..bins)
        .map(|i| (steps.first + i as i64 * steps.step) as f64)
        .collect();
    let plan = plan(source, q, &choice, steps);
    let answers = run(source, plan, steps).await.map_err(Failure::Store)?;
    // The series the store answered with (the page draws once there are any).
    let answered: usize = answers.lines.iter().map(Vec::len).sum();
    let list = assemble(answers, choice, steps);
    let empty = list[0]["series"].as_array().is_none_or(|s| s.is_empty());
    let advice = super::considerations::considerations(&panels::evidence(&list, &times, step), thresholds);
    Ok(json!({
        "considerations": advice,
        "from": start / 1000,
        "to": end / 1000,
        "step": step / 1000,
        "resolution": resolution / 1000,
        "partial": end > now_ms && end - step < now_ms,
        "times": times,
        "empty": empty,
        "series": answered,
        "source": "prometheus",
        "panels": list,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_cannot_leave_the_selector() {
        for good in ["cluster=\"eu-1\"", "job =~ \"gw-.*\"", "a!=\"x\\\"y\"", "b!~\"\""] {
            assert_eq!(check_matcher(good), Ok(()), "{good}");
        }
        for bad in [
            "cluster",
            "1x=\"a\"",
            "a==\"b\"",
            "a=b",
            "a=\"b\"} or vector(1) or x{c=\"d\"",
            "a=\"b\\\"",
        ] {
            assert!(check_matcher(bad).is_err(), "{bad}");
        }
        assert_eq!(quote("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
    }

    #[test]
    fn the_layout_bound_is_the_widest_bucket_of_one_layout() {
        let classic = |model: &str, les: &[&str]| -> Vec<Json> {
            les.iter()
                .map(|le| json!({ "metric": { "le": le, "model": model }, "value": [0, "1"] }))
                .collect()
        };
        let mut all = classic("a", &["0.1", "0.2", "0.4", "+Inf"]);
        all.extend(classic("b", &["1", "1.5", "+Inf"]));
        assert_eq!(layout_bound(&all), Some(1.0));
        assert_eq!(layout_bound(&classic("c", &["+Inf"])), None);
        // Native: 2^(1/8) apart at schema 3.
        let native = json!({ "metric": { "model": "d" }, "histogram": [0, { "count": "3", "buckets": [
            [0, "1", "1.0905077326652577", "2"], [0, "1.0905077326652577", "1.189207115002721", "1"]] }] });
        let bound = layout_bound(&[native]).unwrap();
        assert!((bound - (2f64.powf(0.125) - 1.0)).abs() < 1e-9, "{bound}");
    }
}
