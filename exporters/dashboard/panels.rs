//! The panels of the page, computed from the store for a time range and a selection: the body of
//! `GET /api/panels`. Every panel holds series of values aligned on one list of times (seconds), one value per step
//! (`null` where nothing was received).
//!
//! How several series are combined when a selection matches more than one (several models, deployments):
//! counts and gauges are added up; percentiles are the window quantiles weighted by each window's count (an
//! estimate that lies between the smallest and the largest of the series' own quantiles; pick one model for the
//! exact figure, or use the Prometheus exporter's histograms, which merge exactly).

use std::collections::{BTreeMap, BTreeSet};

use infercol_pipelines::histogram::{ExpoHistogram, relative_error_at};

use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::store::{FILTERS, Kind, Series, Store, TIERS};
use super::{considerations, histograms};

/// The histogram whose window summary is `window` (`model.request.duration_seconds_window` ->
/// `model.request.duration`), as `infercol_pipelines::histogram::window_name` names it.
fn histogram_of(window: &str) -> String {
    let base = window.strip_suffix("_window").unwrap_or(window);
    base.strip_suffix("_seconds")
        .or_else(|| base.strip_suffix("_bytes"))
        .unwrap_or(base)
        .to_string()
}

pub const QUANTILES: [(&str, &str); 4] = [("0.5", "p50"), ("0.9", "p90"), ("0.95", "p95"), ("0.99", "p99")];

/// The query string of `/api/panels`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Query {
    /// `15m`, `1h`, `6h`, `24h`, `7d`, or seconds: the last so long.
    pub range: Option<String>,
    /// Instead of `range`: from and to, in seconds since the epoch (both or neither).
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub model: Option<String>,
    pub environment: Option<String>,
    pub deployment: Option<String>,
    /// One replica (`service.instance.id`): the panels of series that carry it (CPU, memory, GPU memory).
    pub replica: Option<String>,
    /// `request` (end-to-end), `inference` or `ttfb`.
    pub latency: Option<String>,
    /// `request`, `response`, `input_tokens` or `output_tokens`.
    pub size: Option<String>,
}

/// A range as the page and the API name it, in seconds.
pub fn parse_range(range: Option<&str>) -> Result<i64, String> {
    let r = range.unwrap_or("1h").trim();
    let (digits, unit) = r.split_at(r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len()));
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("range: `{r}` is not like 15m, 1h, 6h, 24h, 7d or 900"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("range: `{r}` is not like 15m, 1h, 6h, 24h, 7d or 900")),
    };
    if !(60..=7 * 24 * 3600).contains(&seconds) {
        return Err(format!("range: `{r}` must be between 1 minute and 7 days"));
    }
    Ok(seconds)
}

#[derive(Clone, Copy)]
struct Grid {
    start: i64,
    step: i64,
    bins: usize,
}

impl Grid {
    fn bin(&self, t: i64) -> Option<usize> {
        let i = (t - self.start).div_euclid(self.step);
        (0..self.bins as i64).contains(&i).then_some(i as usize)
    }
}

struct Selection<'a> {
    filters: Vec<(&'static str, &'a str)>,
}

impl Selection<'_> {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.filters
            .iter()
            .all(|(k, v)| labels.get(*k).is_some_and(|have| have == v))
    }
}

pub(super) type Values = Vec<Option<f64>>;

/// A series' attributes.
type Labels = BTreeMap<String, String>;

/// The last value of a series in each step.
fn last_per_bin(s: &Series, grid: &Grid) -> Values {
    let mut out = vec![None; grid.bins];
    for p in &s.points {
        if let Some(i) = grid.bin(p.t) {
            out[i] = Some(p.v);
        }
    }
    out
}

/// Adds `b` into `a`, where either has a value.
pub(super) fn add_into(a: &mut Values, b: &Values) {
    for (x, y) in a.iter_mut().zip(b) {
        if let Some(y) = y {
            *x = Some(x.unwrap_or(0.0) + y);
        }
    }
}

pub(super) fn round(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let digits = 6 - v.abs().log10().ceil() as i32;
    let f = 10f64.powi(digits.clamp(0, 12));
    (v * f).round() / f
}

pub(super) fn series(name: &str, values: &Values, extra: Json) -> Json {
    let mut s = json!({
        "name": name,
        "values": values.iter().map(|v| v.map(round)).collect::<Vec<_>>(),
    });
    if let (Some(obj), Json::Object(more)) = (s.as_object_mut(), extra) {
        obj.extend(more);
    }
    s
}

/// The status group a request is counted in (class, line name): the class for HTTP, the code for gRPC and
/// WebSocket.
pub(super) fn status_group(protocol: Option<&str>, class: Option<&str>, code: Option<&str>) -> (String, String) {
    let class = class.unwrap_or("2xx").to_string();
    let code = code.unwrap_or_default();
    let name = match protocol {
        Some("grpc") => format!("gRPC {code}"),
        Some("websocket") => format!("WebSocket {code}"),
        _ => class.clone(),
    };
    (class, name)
}

/// The volume panel from each status group's requests per second.
pub(super) fn volume_panel(groups: &BTreeMap<(String, String), Values>, bins: usize) -> Json {
    // The step in progress is drawn, marked partial by the answer: its rate reads low until the step is over
    // (a count is reported at the end of the interval it covers, so dividing by the part elapsed would
    // overstate it).
    // Steps between the first and last report are zero, not gaps: nothing was requested then.
    let reported: Vec<bool> = (0..bins).map(|i| groups.values().any(|v| v[i].is_some())).collect();
    let first = reported.iter().position(|r| *r);
    let last = reported.iter().rposition(|r| *r);
    let list: Vec<Json> = groups
        .iter()
        .map(|((class, name), values)| {
            let filled: Values = values
                .iter()
                .enumerate()
                .map(|(i, v)| match (first, last) {
                    (Some(f), Some(l)) if i >= f && i <= l => Some(v.unwrap_or(0.0)),
                    _ => *v,
                })
                .collect();
            series(name, &filled, json!({ "class": class }))
        })
        .collect();
    json!({ "id": "volume", "title": "Inference volume", "unit": "req/s", "stacked": true, "series": list })
}

/// The latency and size a query picked: the histograms' names in OTLP with their unit suffix (as the window
/// summaries and the Prometheus families begin), and the choices as the page draws them.
pub(super) struct Choice {
    pub latency: &'static str,
    pub size: &'static str,
    pub size_unit: &'static str,
    pub latency_json: Json,
    pub size_json: Json,
}

impl Choice {
    pub(super) fn of(latency: &str, size: &str) -> Result<Choice, String> {
        let latency_name = match latency {
            "request" => "model.request.duration_seconds",
            "inference" => "model.inference.duration_seconds",
            "ttfb" => "model.time_to_first_byte_seconds",
            other => return Err(format!("latency: `{other}` is not request, inference or ttfb")),
        };
        let (size_name, size_unit) = match size {
            "request" => ("model.request.size_bytes", "By"),
            "response" => ("model.response.size_bytes", "By"),
            "input_tokens" => ("model.input_tokens", "tokens"),
            "output_tokens" => ("model.output_tokens", "tokens"),
            other => {
                return Err(format!(
                    "size: `{other}` is not request, response, input_tokens or output_tokens"
                ));
            }
        };
        Ok(Choice {
            latency: latency_name,
            size: size_name,
            size_unit,
            latency_json: json!({ "key": "latency", "selected": latency, "options": [
                ["request", "End-to-end"], ["inference", "Inference"], ["ttfb", "Time to first byte"]] }),
            size_json: json!({ "key": "size", "selected": size, "options": [
                ["request", "Request size"], ["response", "Response size"],
                ["input_tokens", "Input tokens"], ["output_tokens", "Output tokens"]] }),
        })
    }
}

struct Ctx<'a> {
    store: &'a Store,
    now_ms: i64,
    grid: Grid,
    sel: Selection<'a>,
}

impl Ctx<'_> {
    fn matching<'s>(&'s self, name: &'s str) -> impl Iterator<Item = (&'s BTreeMap<String, String>, &'s Series)> + 's {
        self.store
            .series
            .iter()
            .filter(move |((n, labels), _)| n == name && self.sel.matches(labels))
            .map(|((_, labels), s)| (labels, s))
    }

    /// Requests per second by status group: the class for HTTP, the code for gRPC and WebSocket.
    fn volume(&self) -> Json {
        let mut groups: BTreeMap<(String, String), Values> = BTreeMap::new();
        let step_s = self.grid.step as f64 / 1000.0;
        for (labels, s) in self.matching("model.requests") {
            if s.kind != Kind::Increase {
                continue;
            }
            let get = |k: &str| labels.get(k).map(String::as_str);
            let mut values = vec![None; self.grid.bins];
            for p in &s.points {
                if let Some(i) = self.grid.bin(p.t) {
                    values[i] = Some(values[i].unwrap_or(0.0) + p.v / step_s);
                }
            }
            add_into(
                groups
                    .entry(status_group(get("protocol"), get("status_class"), get("status_code")))
                    .or_insert_with(|| vec![None; self.grid.bins]),
                &values,
            );
        }
        volume_panel(&groups, self.grid.bins)
    }

    /// What the matching histogram series recorded in each step, merged: exact across series and steps, within
    /// the sketch's bound at the merged scale. Also the labels of the series merged.
    fn merged_steps(&self, histogram: &str) -> (Vec<Option<ExpoHistogram<u64>>>, BTreeSet<Labels>) {
        let mut merged: Vec<Option<ExpoHistogram<u64>>> = vec![None; self.grid.bins];
        let mut covered = BTreeSet::new();
        for ((name, labels), h) in &self.store.histograms {
            if name != histogram || !self.sel.matches(labels) {
                continue;
            }
            covered.insert(labels.clone());
            for (t, step) in &h.deltas {
                if let Some(i) = self.grid.bin(*t) {
                    merged[i].get_or_insert_with(histograms::merged).merge(step);
                }
            }
        }
        (merged, covered)
    }

    /// p50..p99 for a step: from the merged histograms of the series that have them (spans), and from the window
    /// summaries of those that have only a summary (a scraped server's buckets); where both kinds are selected,
    /// weighted by their counts. Returns the lines, how many groups were weighted together, and the widest
    /// relative error of what was combined.
    fn quantiles(&self, name: &str) -> (Vec<Json>, usize, Option<f64>) {
        let (merged, covered) = self.merged_steps(&histogram_of(name));
        // The widest bound of what is combined: the merged histograms' scale, the summaries' stated bounds.
        let mut bound: f64 = 0.0;
        // Per series without a histogram (labels without `quantile`): each quantile's values and the count.
        let mut by_base: BTreeMap<BTreeMap<String, String>, BTreeMap<String, Values>> = BTreeMap::new();
        for (labels, s) in self.matching(name) {
            let Some(q) = labels.get("quantile") else { continue };
            let mut base = labels.clone();
            base.remove("quantile");
            if covered.contains(&base) {
                continue;
            }
            if let Some(e) = s.relative_error
                && s.points.iter().any(|p| self.grid.bin(p.t).is_some())
            {
                bound = bound.max(e);
            }
            by_base
                .entry(base)
                .or_default()
                .insert(q.clone(), last_per_bin(s, &self.grid));
        }
        let mut out = Vec::new();
        for (q, label) in QUANTILES {
            let qf: f64 = q.parse().unwrap_or(0.5);
            let mut values = vec![None; self.grid.bins];
            for (i, v) in values.iter_mut().enumerate() {
                let (mut sum, mut weight) = (0.0, 0.0);
                if let Some(h) = &merged[i]
                    && let Some(value) = h.quantile(qf)
                {
                    sum += value * h.count() as f64;
                    weight += h.count() as f64;
                }
                for qs in by_base.values() {
                    let value = qs.get(q).and_then(|v| v[i]);
                    let count = qs.get("count").and_then(|v| v[i]).unwrap_or(1.0);
                    if let Some(value) = value
                        && count > 0.0
                    {
                        sum += value * count;
                        weight += count;
                    }
                }
                if weight > 0.0 {
                    *v = Some(sum / weight);
                }
            }
            out.push(series(label, &values, json!({})));
        }
        if let Some(coarsest) = merged.iter().flatten().map(|h| h.scale()).min() {
            bound = bound.max(relative_error_at(coarsest));
        }
        let groups = usize::from(!covered.is_empty()) + by_base.len();
        (out, groups, (bound > 0.0).then_some(bound))
    }

    fn percentile_panel(&self, id: &str, title: &str, unit: &str, metric: &str, choice: Option<Json>) -> Json {
        let (list, combined, bound) = self.quantiles(metric);
        let mut panel = json!({ "id": id, "title": title, "unit": unit, "series": list, "combined": combined });
        if let Some(c) = choice {
            panel["choice"] = c;
        }
        if let Some(bound) = bound {
            panel["relative_error"] = json!(round(bound));
        }
        panel
    }

    /// Gauges added up over the matching series, one line per value of `by` (or one line).
    fn gauge_sum(
        &self,
        metric: &str,
        by: Option<&str>,
        only: &dyn Fn(&BTreeMap<String, String>) -> bool,
    ) -> BTreeMap<String, Values> {
        let mut groups: BTreeMap<String, Values> = BTreeMap::new();
        for (labels, s) in self.matching(metric) {
            if !only(labels) {
                continue;
            }
            let group = by.and_then(|b| labels.get(b)).cloned().unwrap_or_default();
            let values = last_per_bin(s, &self.grid);
            add_into(
                groups.entry(group).or_insert_with(|| vec![None; self.grid.bins]),
                &values,
            );
        }
        groups
    }

    fn replicas(&self) -> Json {
        let groups = self.gauge_sum("model.replicas", Some("state"), &|_| true);
        let list: Vec<Json> = ["active", "starting"]
            .iter()
            .filter_map(|state| groups.get(*state).map(|v| series(state, v, json!({}))))
            .collect();
        json!({ "id": "replicas", "title": "Replicas", "unit": "", "series": list, "table": self.replica_table() })
    }

    /// The latest value in the range of each series of `metric`, by `service.instance.id`, added up.
    fn latest_by_replica(&self, metric: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (labels, s) in self.matching(metric) {
            let (Some(id), Some(p)) = (
                labels.get("service.instance.id"),
                s.points.iter().rev().find(|p| self.grid.bin(p.t).is_some()),
            ) else {
                continue;
            };
            *out.entry(id.clone()).or_insert(0.0) += p.v;
        }
        out
    }

    /// Per replica over the range: requests per second (`model.replica.requests`) and the p95 of end-to-end time
    /// (`model.replica.request.duration`, merged over the range).
    fn requests_by_replica(&self) -> (BTreeMap<String, f64>, BTreeMap<String, f64>) {
        let seconds = (self.grid.bins as i64 * self.grid.step) as f64 / 1000.0;
        let mut rates: BTreeMap<String, f64> = BTreeMap::new();
        for (labels, s) in self.matching("model.replica.requests") {
            let Some(id) = labels.get("service.instance.id") else {
                continue;
            };
            if s.kind != Kind::Increase {
                continue;
            }
            let counted: f64 = s
                .points
                .iter()
                .filter(|p| self.grid.bin(p.t).is_some())
                .map(|p| p.v)
                .sum();
            *rates.entry(id.clone()).or_default() += counted / seconds;
        }
        let mut merged: BTreeMap<String, ExpoHistogram<u64>> = BTreeMap::new();
        for ((name, labels), h) in &self.store.histograms {
            let Some(id) = labels.get("service.instance.id") else {
                continue;
            };
            if name != "model.replica.request.duration" || !self.sel.matches(labels) {
                continue;
            }
            for (t, step) in &h.deltas {
                if self.grid.bin(*t).is_some() {
                    merged.entry(id.clone()).or_insert_with(histograms::merged).merge(step);
                }
            }
        }
        let p95 = merged
            .into_iter()
            .filter_map(|(id, h)| Some((id, h.quantile(0.95)?)))
            .collect();
        (rates, p95)
    }

    /// Each replica reported in the range: its state and since when (`model.replica.state_since`), and the
    /// latest CPU, memory and GPU memory of its processes.
    fn replica_table(&self) -> Vec<Json> {
        // Per replica, the state series with the latest point: a replica that became active has left starting.
        let mut states: BTreeMap<String, (i64, String, f64)> = BTreeMap::new();
        for (labels, s) in self.matching("model.replica.state_since") {
            let (Some(id), Some(state), Some(p)) = (
                labels.get("service.instance.id"),
                labels.get("state"),
                s.points.iter().rev().find(|p| self.grid.bin(p.t).is_some()),
            ) else {
                continue;
            };
            if states.get(id).is_none_or(|(t, _, _)| p.t > *t) {
                states.insert(id.clone(), (p.t, state.clone(), p.v));
            }
        }
        let cpu = self.latest_by_replica("process.cpu.utilization");
        let memory = self.latest_by_replica("process.memory.usage");
        let gpu_memory = self.latest_by_replica("process.gpu.memory.usage");
        let (rates, p95) = self.requests_by_replica();
        states
            .into_iter()
            .map(|(id, (_, state, since))| {
                json!({
                    "id": id,
                    "state": state,
                    "since": since,
                    "requests_per_s": rates.get(&id).map(|v| round(*v)),
                    "p95": p95.get(&id).map(|v| round(*v)),
                    "cpu": cpu.get(&id).map(|v| round(v * 100.0)),
                    "memory": memory.get(&id).copied(),
                    "gpu_memory": gpu_memory.get(&id).copied(),
                })
            })
            .collect()
    }

    /// The selection's replica processes when any report, else the host.
    fn cpu_memory(&self) -> Json {
        let replica = |l: &BTreeMap<String, String>| l.contains_key("model");
        let cpu = self.gauge_sum("process.cpu.utilization", None, &replica);
        let memory = self.gauge_sum("process.memory.usage", None, &replica);
        let (cpu, memory, source) = if cpu.is_empty() && memory.is_empty() {
            let host = Ctx {
                store: self.store,
                now_ms: self.now_ms,
                grid: self.grid,
                sel: Selection { filters: Vec::new() },
            };
            let used = |l: &BTreeMap<String, String>| l.get("system.memory.state").is_none_or(|s| s == "used");
            (
                host.gauge_sum("system.cpu.utilization", None, &|_| true),
                host.gauge_sum("system.memory.usage", None, &used),
                "host",
            )
        } else {
            (cpu, memory, "replicas")
        };
        let mut list = Vec::new();
        if let Some(v) = cpu.get("") {
            let percent: Values = v.iter().map(|x| x.map(|r| r * 100.0)).collect();
            list.push(series("CPU", &percent, json!({ "unit": "%", "axis": "left" })));
        }
        if let Some(v) = memory.get("") {
            // The memory there is (a container's limit, else the machine's), for the considerations.
            let all = Ctx {
                store: self.store,
                now_ms: self.now_ms,
                grid: self.grid,
                sel: Selection { filters: Vec::new() },
            };
            let limit = all
                .gauge_sum("system.memory.limit", None, &|_| true)
                .get("")
                .and_then(|l| l.iter().flatten().copied().reduce(f64::max));
            list.push(series(
                "memory",
                v,
                json!({ "unit": "By", "axis": "right", "limit": limit }),
            ));
        }
        json!({ "id": "cpu_memory", "title": "CPU and memory", "unit": "%", "right_unit": "By", "source": source, "series": list })
    }

    /// Every GPU's utilisation and memory; with a selection, the GPUs its replicas hold memory on.
    fn gpu(&self) -> Json {
        let held: std::collections::BTreeSet<String> = self
            .matching("process.gpu.memory.usage")
            .filter_map(|(l, _)| l.get("hw.id").cloned())
            .collect();
        let selected = !self.sel.filters.is_empty();
        let all = Ctx {
            store: self.store,
            now_ms: self.now_ms,
            grid: self.grid,
            sel: Selection { filters: Vec::new() },
        };
        let on = |l: &BTreeMap<String, String>| !selected || l.get("hw.id").is_some_and(|id| held.contains(id));
        let name_of = |id: &str| -> String {
            let index = all
                .matching("hw.gpu.utilization")
                .chain(all.matching("hw.gpu.memory.usage"))
                .find(|(l, _)| l.get("hw.id").map(String::as_str) == Some(id))
                .and_then(|(l, _)| l.get("hw.gpu.index").cloned());
            format!("GPU {}", index.unwrap_or_else(|| id.chars().take(12).collect()))
        };
        let mut list = Vec::new();
        for (id, v) in all.gauge_sum("hw.gpu.utilization", Some("hw.id"), &on) {
            let percent: Values = v.iter().map(|x| x.map(|r| r * 100.0)).collect();
            list.push(series(
                &format!("{} busy", name_of(&id)),
                &percent,
                json!({ "unit": "%", "axis": "left" }),
            ));
        }
        let limits = all.gauge_sum("hw.gpu.memory.limit", Some("hw.id"), &on);
        for (id, v) in all.gauge_sum("hw.gpu.memory.usage", Some("hw.id"), &on) {
            // The GPU's memory, for the out-of-memory consideration.
            let limit = limits
                .get(&id)
                .and_then(|l| l.iter().flatten().copied().reduce(f64::max));
            list.push(series(
                &format!("{} memory", name_of(&id)),
                &v,
                json!({ "unit": "By", "axis": "right", "limit": limit }),
            ));
        }
        if selected {
            let model = self.gauge_sum("process.gpu.memory.usage", None, &|_| true);
            if let Some(v) = model.get("") {
                list.push(series(
                    "selection's memory",
                    v,
                    json!({ "unit": "By", "axis": "right" }),
                ));
            }
        }
        json!({ "id": "gpu", "title": "GPU usage and memory", "unit": "%", "right_unit": "By", "series": list })
    }

    /// The summed size of a queue: the async queue before the service, or the queue inside the model server.
    fn queue_size(&self, id: &str, title: &str, metric: &str) -> Json {
        let groups = self.gauge_sum(metric, None, &|_| true);
        let list: Vec<Json> = groups
            .get("")
            .map(|v| series("waiting", v, json!({})))
            .into_iter()
            .collect();
        json!({ "id": id, "title": title, "unit": "", "series": list })
    }

    /// Marks a panel with where its series come from in this range (`sources`: spans, scraped, metrics).
    fn mark_sources(&self, panel: &mut Json, metric: &str) {
        let mut sources = BTreeSet::new();
        for (_, s) in self.matching(metric) {
            if s.points.iter().any(|p| self.grid.bin(p.t).is_some()) {
                sources.insert(s.origin);
            }
        }
        panel["sources"] = json!(sources.iter().map(|o| o.name()).collect::<Vec<_>>());
    }
}

impl Ctx<'_> {
    /// Every panel, with the latency and size choices the query made.
    fn list(&self, latency: &str, size: &str) -> Result<Vec<Json>, String> {
        let choice = Choice::of(latency, size)?;
        let latency_metric = format!("{}_window", choice.latency);
        let size_metric = format!("{}_window", choice.size);
        let (latency_metric, size_metric, size_unit) =
            (latency_metric.as_str(), size_metric.as_str(), choice.size_unit);
        let (latency_choice, size_choice) = (choice.latency_json, choice.size_json);
        let queue_time = "model.async_queue.duration_seconds_window";
        let server_queue_time = "model.queue.duration_seconds_window";
        // Each panel, and the metric whose sources mark it (none for the host's and GPUs').
        let panels = [
            (self.volume(), Some("model.requests")),
            (
                self.percentile_panel("latency", "Response time", "s", latency_metric, Some(latency_choice)),
                Some(latency_metric),
            ),
            (
                self.percentile_panel(
                    "size",
                    "Request and response size",
                    size_unit,
                    size_metric,
                    Some(size_choice),
                ),
                Some(size_metric),
            ),
            (self.replicas(), Some("model.replicas")),
            (self.cpu_memory(), None),
            (self.gpu(), None),
            (
                self.percentile_panel("queue_time", "Time in async queue", "s", queue_time, None),
                Some(queue_time),
            ),
            (
                self.queue_size("queue_size", "Async queue size", "model.async_queue.size"),
                Some("model.async_queue.size"),
            ),
            // Beside the async queue: the wait inside the model server (its scheduler or batch queue), and its size.
            (
                self.percentile_panel(
                    "server_queue_time",
                    "Time in server queue",
                    "s",
                    server_queue_time,
                    None,
                ),
                Some(server_queue_time),
            ),
            (
                self.queue_size("server_queue_size", "Server queue size", "model.queue.size"),
                Some("model.queue.size"),
            ),
        ];
        Ok(panels
            .into_iter()
            .map(|(mut panel, metric)| {
                if let Some(metric) = metric {
                    self.mark_sources(&mut panel, metric);
                }
                panel
            })
            .collect())
    }
}

/// The span of a query in ms since the epoch: `from` and `to`, or the last `range` up to now.
pub(super) fn span(q: &Query, now_ms: i64, retention_ms: i64) -> Result<(i64, i64), String> {
    match (q.from, q.to) {
        (None, None) => Ok((now_ms - parse_range(q.range.as_deref())? * 1000, now_ms)),
        (Some(from), Some(to)) => {
            let (from, to) = (from.saturating_mul(1000), to.saturating_mul(1000));
            if to - from < 60_000 {
                return Err("from, to: `to` must be at least a minute after `from` (seconds since the epoch)".into());
            }
            if to - from > retention_ms {
                return Err(format!(
                    "from, to: at most the retention ({} s) apart",
                    retention_ms / 1000
                ));
            }
            Ok((from, to))
        }
        _ => Err("from, to: give both (seconds since the epoch), or `range`".into()),
    }
}

/// The resolution of the points at `t`: the flush interval in the recent hours, then each tier's step.
fn resolution_at(store: &Store, t: i64, now_ms: i64) -> i64 {
    TIERS
        .iter()
        .rev()
        .find(|(age, _)| t < now_ms - age)
        .map_or(store.resolution_ms(), |(_, width)| *width)
}

/// What the considerations read, from the panels as drawn: (step end, value) of one line of a panel.
pub(super) fn evidence(panels: &[Json], times: &[f64], step_ms: i64) -> considerations::Evidence {
    let panel = |id: &str| panels.iter().find(|p| p["id"] == id);
    let line = |s: &Json, scale: f64| -> considerations::Line {
        let values = s["values"].as_array().cloned().unwrap_or_default();
        times
            .iter()
            .zip(values)
            .filter_map(|(t, v)| Some((*t, v.as_f64()? * scale)))
            .collect()
    };
    let named = |id: &str, name: &str, scale: f64| -> considerations::Line {
        panel(id)
            .and_then(|p| {
                p["series"]
                    .as_array()?
                    .iter()
                    .find(|s| s["name"] == name)
                    .map(|s| line(s, scale))
            })
            .unwrap_or_default()
    };
    let per_limit = |s: &Json| s["limit"].as_f64().filter(|l| *l > 0.0).map(|l| line(s, 1.0 / l));
    let memory = panel("cpu_memory")
        .and_then(|p| {
            p["series"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == "memory")
                .and_then(per_limit)
        })
        .unwrap_or_default();
    let gpu_series = panel("gpu")
        .and_then(|p| p["series"].as_array().cloned())
        .unwrap_or_default();
    let gpus = gpu_series
        .iter()
        .filter_map(|s| {
            let name = s["name"].as_str()?.strip_suffix(" busy")?.to_string();
            let memory = gpu_series
                .iter()
                .find(|m| m["name"] == format!("{name} memory"))
                .and_then(per_limit)
                .unwrap_or_default();
            Some((name, line(s, 0.01), memory))
        })
        .collect();
    considerations::Evidence {
        step_s: step_ms as f64 / 1000.0,
        cpu: named("cpu_memory", "CPU", 0.01),
        memory,
        gpus,
        latency_p95: named("latency", "p95", 1.0),
        async_queue: named("queue_size", "waiting", 1.0),
        server_queue: named("server_queue_size", "waiting", 1.0),
        starting: named("replicas", "starting", 1.0),
    }
}

/// The body of `GET /api/panels`.
pub fn panels(store: &Store, q: &Query, now_ms: i64) -> Result<Json, String> {
    let (from, to) = span(q, now_ms, store.retention.as_millis() as i64)?;
    let resolution = resolution_at(store, from, now_ms);
    // About 180 steps over the span, never finer than the points there.
    let step = (((to - from) / 180).max(resolution) + 999) / 1000 * 1000;
    let end = (to / step + 1) * step;
    let bins = ((end - from) / step).max(1) as usize;
    let grid = Grid {
        start: end - bins as i64 * step,
        step,
        bins,
    };
    let selected: Vec<(&'static str, &str)> = FILTERS
        .iter()
        .chain(&["service.instance.id"])
        .zip([&q.model, &q.environment, &q.deployment, &q.replica])
        .filter_map(|(k, v)| v.as_deref().filter(|v| !v.is_empty()).map(|v| (*k, v)))
        .collect();
    let times: Vec<f64> = (0..bins)
        .map(|i| (grid.start + (i as i64 + 1) * step) as f64 / 1000.0)
        .collect();
    let ctx = Ctx {
        store,
        now_ms,
        grid,
        sel: Selection { filters: selected },
    };
    let latency = q.latency.as_deref().unwrap_or("request");
    let size = q.size.as_deref().unwrap_or("request");
    let list = ctx.list(latency, size)?;
    let advice = considerations::considerations(&evidence(&list, &times, step), &store.considerations);
    Ok(json!({
        "considerations": advice,
        "from": (ctx.grid.start / 1000),
        "to": end / 1000,
        "step": step / 1000,
        "resolution": resolution / 1000,
        // The last step is still being filled: its rates are over the part elapsed.
        "partial": end > now_ms && end - step < now_ms,
        "times": times,
        "empty": store.no_model_data(),
        "series": store.series.len(),
        "panels": list,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::store::tests::{kv, request};
    use opentelemetry_proto::tonic::metrics::v1::{
        AggregationTemporality, Metric, NumberDataPoint, Sum, Summary, SummaryDataPoint, metric::Data,
        number_data_point, summary_data_point::ValueAtQuantile,
    };
    use std::time::Duration;

    fn panel<'a>(body: &'a Json, id: &str) -> &'a Json {
        body["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap()
    }

    /// Requests per second per status class from delta counts, the step in progress left out; percentiles of two
    /// models weighted by their windows' counts; filters narrow both.
    #[test]
    fn volume_rates_and_weighted_percentiles() {
        let mut store = Store::new(Duration::from_secs(3600), 1000);
        let t0: i64 = 1_800_000_000_000; // ms, a multiple of the 10 s step
        for k in 0..6i64 {
            let at = ((t0 + k * 10_000) * 1_000_000) as u64;
            let count = |model: &str, class: &str, v: f64| NumberDataPoint {
                attributes: vec![kv("model", model), kv("protocol", "http"), kv("status_class", class)],
                time_unix_nano: at,
                value: Some(number_data_point::Value::AsDouble(v)),
                ..Default::default()
            };
            let window = |model: &str, p50: f64, n: u64| SummaryDataPoint {
                attributes: vec![kv("model", model)],
                time_unix_nano: at,
                count: n,
                quantile_values: vec![ValueAtQuantile {
                    quantile: 0.5,
                    value: p50,
                }],
                ..Default::default()
            };
            store.ingest(&request(vec![
                Metric {
                    name: "model.requests".into(),
                    data: Some(Data::Sum(Sum {
                        data_points: vec![count("a", "2xx", 50.0), count("b", "5xx", 20.0)],
                        aggregation_temporality: AggregationTemporality::Delta as i32,
                        is_monotonic: true,
                    })),
                    ..Default::default()
                },
                Metric {
                    name: "model.request.duration_seconds_window".into(),
                    data: Some(Data::Summary(Summary {
                        data_points: vec![window("a", 1.0, 1), window("b", 2.0, 3)],
                    })),
                    ..Default::default()
                },
            ]));
        }
        // Now is 2 s into the step after the last point's.
        let now = t0 + 5 * 10_000 + 2_000;
        let q = Query {
            range: Some("15m".into()),
            ..Default::default()
        };
        let body = panels(&store, &q, now).unwrap();
        assert_eq!(body["step"], 10);
        let volume = panel(&body, "volume");
        let series = |name: &str| -> Vec<f64> {
            volume["series"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == name)
                .unwrap()["values"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_f64())
                .collect()
        };
        assert_eq!(
            series("2xx"),
            vec![5.0; 6],
            "50 a step of 10 s; the step in progress is drawn too"
        );
        assert_eq!(series("5xx"), vec![2.0; 6]);
        assert_eq!(body["partial"], true, "now is 2 s into the last step");
        let p50: Vec<f64> = panel(&body, "latency")["series"][0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_f64())
            .collect();
        assert_eq!(p50, vec![1.75; 6], "(1 x 1 + 2 x 3) / 4");
        assert_eq!(panel(&body, "latency")["combined"], 2);

        let only_b = Query {
            range: Some("15m".into()),
            model: Some("b".into()),
            ..Default::default()
        };
        let body = panels(&store, &only_b, now).unwrap();
        let names: Vec<&str> = panel(&body, "volume")["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["5xx"]);
        assert_eq!(
            panel(&body, "latency")["series"][0]["values"]
                .as_array()
                .unwrap()
                .last()
                .unwrap(),
            2.0
        );
    }

    /// Each panel names where its series come from; a percentile panel states the widest relative error of the
    /// summaries it combines: the sketch's for spans, the server's bucket layout for a scraped model.
    #[test]
    fn panels_mark_their_sources_and_the_precision_of_percentiles() {
        use infercol_pipelines::histogram::quantile_error_metadata;
        use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
        let mut store = Store::new(Duration::from_secs(3600), 1000);
        let t0: i64 = 1_800_000_000_000;
        let window = |model: &str, bound: f64| Metric {
            name: "model.request.duration_seconds_window".into(),
            data: Some(Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    attributes: vec![kv("model", model)],
                    time_unix_nano: (t0 * 1_000_000) as u64,
                    count: 4,
                    quantile_values: vec![ValueAtQuantile {
                        quantile: 0.5,
                        value: 1.0,
                    }],
                    ..Default::default()
                }],
            })),
            metadata: quantile_error_metadata(bound),
            ..Default::default()
        };
        for (scope, model, bound) in [
            ("infercol/model_metrics", "chat", 0.0054),
            ("infercol/prometheus", "llama", 3.0),
        ] {
            let mut r = request(vec![window(model, bound)]);
            r.resource_metrics[0].scope_metrics[0].scope = Some(InstrumentationScope {
                name: scope.into(),
                ..Default::default()
            });
            store.ingest(&r);
        }
        let now = t0 + 2_000;
        let latency = |model: Option<&str>| {
            let q = Query {
                range: Some("15m".into()),
                model: model.map(String::from),
                ..Default::default()
            };
            panel(&panels(&store, &q, now).unwrap(), "latency").clone()
        };
        let chat = latency(Some("chat"));
        assert_eq!(chat["sources"], json!(["spans"]));
        assert_eq!(chat["relative_error"], 0.0054);
        let llama = latency(Some("llama"));
        assert_eq!(llama["sources"], json!(["scraped"]));
        assert_eq!(llama["relative_error"], 3.0);
        let all = latency(None);
        assert_eq!(all["sources"], json!(["spans", "scraped"]));
        assert_eq!(all["relative_error"], 3.0, "the widest bound of what is combined");
        let q = Query {
            range: Some("15m".into()),
            ..Default::default()
        };
        let body = panels(&store, &q, now).unwrap();
        assert_eq!(
            panel(&body, "volume")["sources"],
            json!([]),
            "nothing counted, no source"
        );
        assert!(
            panel(&body, "gpu").get("sources").is_none(),
            "the GPUs are not a model's"
        );
    }

    /// Three models' cumulative exponential histograms (160 buckets, as model_metrics emits them), flushed every
    /// 10 s: each step's p50..p99 over all three, and over a minute they were rolled up into, are within 1% of
    /// the exact percentile of the values sent in it.
    #[test]
    fn percentiles_over_merged_series_and_rolled_up_steps_are_within_one_percent() {
        use infercol_pipelines::histogram::ExpoHistogram;
        use opentelemetry_proto::tonic::metrics::v1::ExponentialHistogram;
        let mut store = Store::new(Duration::from_secs(86_400), 1000);
        let mut cumulative: Vec<ExpoHistogram<u64>> = (0..3).map(|_| ExpoHistogram::new(160, 20)).collect();
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            0.1 * 5f64.powf((seed >> 11) as f64 / (1u64 << 53) as f64)
        };
        let now: i64 = 1_800_000_000_000 + 9 * 3_600_000;
        // Flushes 8 h ago (rolled up into minutes) and in the last 5 minutes; the values each step holds.
        let flushes: Vec<i64> = (0..60)
            .map(|k| now - 8 * 3_600_000 + k * 10_000)
            .chain((0..30).map(|k| now - 300_000 + k * 10_000))
            .collect();
        let mut sent: Vec<(i64, f64)> = Vec::new();
        let start = (flushes[0] - 1_000) as u64 * 1_000_000;
        for &t in &flushes {
            let mut points = Vec::new();
            for (m, h) in cumulative.iter_mut().enumerate() {
                for _ in 0..(20 + 15 * m) {
                    let v = next();
                    h.record(v, 1);
                    sent.push((t, v));
                }
                points.push(h.to_otlp(vec![kv("model", ["a", "b", "c"][m])], start, t as u64 * 1_000_000));
            }
            store.ingest(&request(vec![Metric {
                name: "model.request.duration".into(),
                unit: "s".into(),
                data: Some(Data::ExponentialHistogram(ExponentialHistogram {
                    data_points: points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                })),
                ..Default::default()
            }]));
        }
        store.expire(now);
        let steps = store.histograms.values().next().unwrap().deltas.len();
        assert_eq!(steps, 10 + 30, "8 h ago, 60 flushes became 10 one-minute steps");
        let check = |q: Query, width: i64| {
            let body = panels(&store, &q, now).unwrap();
            let latency = panel(&body, "latency");
            assert_eq!(
                latency["combined"], 1,
                "one merged histogram, not an average: {latency}"
            );
            let times: Vec<i64> = body["times"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| (t.as_f64().unwrap() * 1000.0) as i64)
                .collect();
            let mut checked = 0;
            for (line, (qs, _)) in latency["series"].as_array().unwrap().iter().zip(QUANTILES) {
                let qf: f64 = qs.parse().unwrap();
                for (i, v) in line["values"].as_array().unwrap().iter().enumerate() {
                    let Some(got) = v.as_f64() else { continue };
                    let end = times[i];
                    let mut values: Vec<f64> = sent
                        .iter()
                        .filter(|(t, _)| *t < end && *t >= end - width)
                        .map(|(_, v)| *v)
                        .collect();
                    values.sort_by(f64::total_cmp);
                    let exact = values[(qf * (values.len() - 1) as f64).floor() as usize];
                    assert!(
                        ((got - exact) / exact).abs() <= 0.01,
                        "p{qs} at {end}: {got} against {exact}"
                    );
                    checked += 1;
                }
            }
            assert!(checked >= 40, "{checked} figures checked");
            assert!(latency["relative_error"].as_f64().unwrap() <= 0.01, "{latency}");
        };
        check(
            Query {
                range: Some("15m".into()),
                ..Default::default()
            },
            10_000,
        );
        let from = (now - 8 * 3_600_000) / 1000;
        check(
            Query {
                from: Some(from - 60),
                to: Some(from + 3_600),
                ..Default::default()
            },
            60_000,
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(Some("15m")), Ok(900));
        assert_eq!(parse_range(Some("6h")), Ok(21_600));
        assert_eq!(parse_range(None), Ok(3600));
        assert_eq!(parse_range(Some("120")), Ok(120));
        assert!(parse_range(Some("1x")).unwrap_err().contains("15m"));
        assert!(parse_range(Some("10s")).unwrap_err().contains("between"));
    }
}

/// The README's figures for a week of history (run by hand: `cargo test --release -p infercol-exporters
/// week_of_history_figures -- --ignored --nocapture`): the time to answer a 7d page, and the bytes the history of
/// one model takes on disk per series and day. Measured, not asserted.
#[cfg(test)]
mod figures {
    use super::super::disk::Disk;
    use super::super::store::tests::{kv, request};
    use super::*;
    use opentelemetry_proto::tonic::metrics::v1::{
        AggregationTemporality, Gauge, Metric, NumberDataPoint, Sum, metric::Data, number_data_point,
    };
    use std::time::{Duration, Instant};

    /// One flush of a model's ~45 series: 10 request counters, 5 gauges, 6 window summaries of 4 quantiles and
    /// a count.
    fn flush(t_ms: i64, n: f64) -> Vec<Metric> {
        let at = t_ms as u64 * 1_000_000;
        let point = |labels: Vec<(&str, String)>, v: f64| NumberDataPoint {
            attributes: labels.into_iter().map(|(k, v)| kv(k, &v)).collect(),
            start_time_unix_nano: 1,
            time_unix_nano: at,
            value: Some(number_data_point::Value::AsDouble(v)),
            ..Default::default()
        };
        let base = || vec![("model", "m".to_string())];
        let mut out = vec![Metric {
            name: "model.requests".into(),
            data: Some(Data::Sum(Sum {
                data_points: (0..10)
                    .map(|i| {
                        let mut l = base();
                        l.push(("status_code", format!("{}", 200 + i)));
                        point(l, n * (i + 1) as f64)
                    })
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        }];
        for g in ["a", "b", "c", "d", "e"] {
            out.push(Metric {
                name: format!("model.gauge_{g}"),
                data: Some(Data::Gauge(Gauge {
                    data_points: vec![point(base(), n % 7.0)],
                })),
                ..Default::default()
            });
        }
        for w in 0..6 {
            use opentelemetry_proto::tonic::metrics::v1::{
                Summary, SummaryDataPoint, summary_data_point::ValueAtQuantile,
            };
            out.push(Metric {
                name: format!("model.window_{w}_seconds_window"),
                data: Some(Data::Summary(Summary {
                    data_points: vec![SummaryDataPoint {
                        attributes: vec![kv("model", "m")],
                        time_unix_nano: at,
                        count: 10,
                        quantile_values: [0.5, 0.9, 0.95, 0.99]
                            .iter()
                            .map(|&q| ValueAtQuantile {
                                quantile: q,
                                value: q * n,
                            })
                            .collect(),
                        ..Default::default()
                    }],
                })),
                ..Default::default()
            });
        }
        out
    }

    /// Six histograms of 20 values a flush, cumulative as model_metrics emits them.
    fn histograms_flush(
        t_ms: i64,
        cumulative: &mut [infercol_pipelines::histogram::ExpoHistogram<u64>],
        seed: &mut u64,
    ) -> Metric {
        use opentelemetry_proto::tonic::metrics::v1::ExponentialHistogram;
        let mut points = Vec::new();
        for (i, h) in cumulative.iter_mut().enumerate() {
            for _ in 0..20 {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                h.record(0.1 * 10f64.powf((*seed >> 11) as f64 / (1u64 << 53) as f64), 1);
            }
            points.push(h.to_otlp(
                vec![kv("model", "m"), kv("h", &i.to_string())],
                1,
                t_ms as u64 * 1_000_000,
            ));
        }
        Metric {
            name: "model.request.duration".into(),
            data: Some(Data::ExponentialHistogram(ExponentialHistogram {
                data_points: points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        }
    }

    #[test]
    #[ignore]
    fn week_of_history_figures() {
        let mut cumulative: Vec<_> = (0..6)
            .map(|_| infercol_pipelines::histogram::ExpoHistogram::<u64>::new(160, 20))
            .collect();
        let mut seed = 1u64;
        let dir = tempfile::tempdir().unwrap();
        let mut disk = Disk::open(dir.path()).unwrap();
        let mut store = Store::new(Duration::from_secs(7 * 86_400), 20_000);
        store.keep_changes();
        let start = 1_800_000_000_000i64;
        let end = start + 7 * 86_400_000;
        let (mut t, mut n) = (start, 0.0);
        let began = Instant::now();
        while t <= end {
            n += 1.0;
            let mut metrics = flush(t, n);
            metrics.push(histograms_flush(t, &mut cumulative, &mut seed));
            store.ingest(&request(metrics));
            store.maybe_expire(t);
            disk.write(store.take_changes());
            t += 10_000;
        }
        let wrote = began.elapsed();
        let series = store.series.len() + store.histograms.len();
        let points: usize = store.series.values().map(|s| s.points.len()).sum();
        let steps: usize = store.histograms.values().map(|h| h.deltas.len()).sum();
        let histogram_bytes: usize = store
            .histograms
            .values()
            .flat_map(|h| h.deltas.iter())
            .map(|(_, d)| d.heap_bytes() + std::mem::size_of_val(d) + 8)
            .sum();
        let q = Query {
            range: Some("7d".into()),
            model: Some("m".into()),
            ..Default::default()
        };
        let began = Instant::now();
        let runs = 20;
        for _ in 0..runs {
            panels(&store, &q, end).unwrap();
        }
        let page = began.elapsed() / runs;
        drop(disk);
        let bytes: u64 = walk(dir.path());
        for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let m = e.metadata().unwrap();
            let size = if m.is_dir() {
                walk(&e.path())
            } else {
                std::os::unix::fs::MetadataExt::blocks(&m) * 512
            };
            println!("  {:?}: {size}", e.file_name());
        }
        println!(
            "{series} series, {points} points and {steps} histogram steps ({histogram_bytes} bytes, 6 histograms) in \
             memory after 7 days; writing 60,481 flushes took {wrote:?}; a 7d page answers in {page:?}; on disk \
             {bytes} bytes = {:.0} bytes per series and day",
            bytes as f64 / series as f64 / 7.0
        );
    }

    fn walk(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                let m = e.metadata().unwrap();
                // Blocks allocated, not the apparent length: a journal may be allocated ahead.
                if m.is_dir() {
                    walk(&e.path())
                } else {
                    std::os::unix::fs::MetadataExt::blocks(&m) * 512
                }
            })
            .sum()
    }
}
