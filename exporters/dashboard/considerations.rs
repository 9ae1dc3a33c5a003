//! Advice beside the panels, as a hosted inference platform's Metrics tab gives it ("high CPU usage may degrade
//! performance: consider a larger instance"), computed for the selection over the range from the same steps the
//! panels draw. Each consideration names its evidence: the figure (the mean over the run of steps that met the
//! condition), the threshold, and since when. None is given without data: a condition must hold over every step
//! with data for its duration, up to the latest step with data.

use std::time::Duration;

use infercol_pipelines::config::duration;
use serde::Deserialize;
use serde_json::{Value as Json, json};

/// `exporters.dashboard.considerations`: thresholds (ratios of the limit, 0..1) and how long each must hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsiderationsConfig {
    /// CPU (the selection's replica processes, as a share of all cores; else the host) at or above this...
    pub cpu_high: f64,
    /// ...or memory at or above this share of `system.memory.limit`...
    pub memory_high: f64,
    /// ...for this long: consider a larger instance. Also how long GPU saturation must last.
    #[serde(with = "duration")]
    pub high_for: Duration,
    /// CPU and memory both at or below these...
    pub cpu_low: f64,
    pub memory_low: f64,
    /// ...for this long: possible overprovisioning. Also how long a GPU must stay idle.
    #[serde(with = "duration")]
    pub low_for: Duration,
    /// A GPU's memory at or above this share of its limit: out-of-memory risk.
    pub gpu_memory_high: f64,
    /// A GPU busy at or below this share of the time: a smaller GPU, or more work per GPU.
    pub gpu_low: f64,
    /// A GPU busy at or above this while p95 latency grew by `latency_rise` (a factor) over the run: saturated.
    pub gpu_busy: f64,
    pub latency_rise: f64,
    /// A queue that grew over this long (async queue or the server's own).
    #[serde(with = "duration")]
    pub queue_growth_for: Duration,
    /// Replicas starting for this long: stuck.
    #[serde(with = "duration")]
    pub starting_for: Duration,
}

impl Default for ConsiderationsConfig {
    fn default() -> Self {
        ConsiderationsConfig {
            cpu_high: 0.8,
            memory_high: 0.85,
            high_for: Duration::from_secs(300),
            cpu_low: 0.1,
            memory_low: 0.2,
            low_for: Duration::from_secs(1800),
            gpu_memory_high: 0.9,
            gpu_low: 0.1,
            gpu_busy: 0.9,
            latency_rise: 1.5,
            queue_growth_for: Duration::from_secs(300),
            starting_for: Duration::from_secs(600),
        }
    }
}

impl ConsiderationsConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (key, v) in [
            ("cpu_high", self.cpu_high),
            ("memory_high", self.memory_high),
            ("cpu_low", self.cpu_low),
            ("memory_low", self.memory_low),
            ("gpu_memory_high", self.gpu_memory_high),
            ("gpu_low", self.gpu_low),
            ("gpu_busy", self.gpu_busy),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("considerations.{key}: a share between 0 and 1, not {v}"));
            }
        }
        if self.latency_rise.is_nan() || self.latency_rise < 1.0 {
            return Err("considerations.latency_rise: a factor of at least 1".into());
        }
        Ok(())
    }
}

/// The steps of a panel line: (step end in seconds, value).
pub type Line = Vec<(f64, f64)>;

/// The latest run of steps with data that all meet `holds`, if it lasts at least `min` (from the step before its
/// first, as each step covers the time up to its end): (since, the run's values).
fn sustained(line: &Line, step_s: f64, min: Duration, holds: impl Fn(f64) -> bool) -> Option<(f64, Vec<f64>)> {
    let mut run: Vec<(f64, f64)> = Vec::new();
    for &(t, v) in line.iter().rev() {
        if !holds(v) {
            break;
        }
        run.push((t, v));
    }
    let (first, last) = (run.last()?.0 - step_s, run.first()?.0);
    (last - first >= min.as_secs_f64()).then(|| (first, run.iter().rev().map(|(_, v)| *v).collect()))
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// What a consideration says and where.
struct Advice<'a> {
    id: &'a str,
    panel: &'a str,
    text: String,
    threshold: f64,
    unit: &'a str,
}

/// The consideration for a run of steps (`since`, its values) of `line`; its figure is the run's mean unless given.
fn give(a: Advice<'_>, (since, values): (f64, Vec<f64>), figure: Option<f64>, line: &Line) -> Json {
    let to = line.last().map_or(since, |p| p.0);
    json!({
        "id": a.id,
        "panel": a.panel,
        "advice": a.text,
        "evidence": {
            "figure": (figure.unwrap_or_else(|| mean(&values)) * 1000.0).round() / 1000.0,
            "threshold": a.threshold,
            "unit": a.unit,
            "since": since,
            "for_seconds": (to - since).round(),
        },
    })
}

/// What the page's panels show, as the rules read it.
pub struct Evidence {
    pub step_s: f64,
    /// CPU as a share (0..1) of the selection's replicas or the host; memory as a share of its limit.
    pub cpu: Line,
    pub memory: Line,
    /// Per GPU: its name, busy share and memory share of its limit.
    pub gpus: Vec<(String, Line, Line)>,
    /// p95 of the latency panel, in seconds.
    pub latency_p95: Line,
    pub async_queue: Line,
    pub server_queue: Line,
    pub starting: Line,
}

/// Every consideration the evidence supports.
pub fn considerations(e: &Evidence, c: &ConsiderationsConfig) -> Vec<Json> {
    let mut out = instance(e, c);
    for (name, busy, memory) in &e.gpus {
        out.extend(gpu(e, c, name, busy, memory));
    }
    out.extend(queues_and_replicas(e, c));
    out
}

/// A larger instance, or a smaller one.
fn instance(e: &Evidence, c: &ConsiderationsConfig) -> Vec<Json> {
    let s = e.step_s;
    let advice = |id, text: &str, threshold| Advice {
        id,
        panel: "cpu_memory",
        text: text.into(),
        threshold,
        unit: "ratio",
    };
    let mut out = Vec::new();
    if let Some(run) = sustained(&e.cpu, s, c.high_for, |v| v >= c.cpu_high) {
        let text = "High CPU usage may degrade performance: consider a larger instance.";
        out.push(give(advice("larger_instance", text, c.cpu_high), run, None, &e.cpu));
    } else if let Some(run) = sustained(&e.memory, s, c.high_for, |v| v >= c.memory_high) {
        let text = "High memory usage may degrade performance: consider a larger instance.";
        out.push(give(
            advice("larger_instance", text, c.memory_high),
            run,
            None,
            &e.memory,
        ));
    }
    let low_cpu = sustained(&e.cpu, s, c.low_for, |v| v <= c.cpu_low);
    let low_memory = sustained(&e.memory, s, c.low_for, |v| v <= c.memory_low);
    if let (Some((since, v)), Some((since_memory, _))) = (low_cpu, low_memory) {
        let text = "Low CPU and memory usage: possible overprovisioning; a smaller instance would do.";
        out.push(give(
            advice("overprovisioned", text, c.cpu_low),
            (since.max(since_memory), v),
            None,
            &e.cpu,
        ));
    }
    out
}

/// A GPU near its memory limit, idle, or saturated while latency rises.
fn gpu(e: &Evidence, c: &ConsiderationsConfig, name: &str, busy: &Line, memory: &Line) -> Vec<Json> {
    let s = e.step_s;
    let advice = |id, panel, text: String, threshold| Advice {
        id,
        panel,
        text,
        threshold,
        unit: "ratio",
    };
    let mut out = Vec::new();
    if let Some(run) = sustained(memory, s, Duration::ZERO, |v| v >= c.gpu_memory_high) {
        let text = format!("{name}: memory near its limit, a risk of running out of memory.");
        out.push(give(
            advice("gpu_memory", "gpu", text, c.gpu_memory_high),
            run,
            None,
            memory,
        ));
    }
    if let Some(run) = sustained(busy, s, c.low_for, |v| v <= c.gpu_low) {
        let text = format!("{name}: low utilization: consider a smaller GPU or more work per GPU.");
        out.push(give(advice("gpu_idle", "gpu", text, c.gpu_low), run, None, busy));
    }
    if let Some(run) = sustained(busy, s, c.high_for, |v| v >= c.gpu_busy) {
        let during: Vec<f64> = e.latency_p95.iter().filter(|(t, _)| *t > run.0).map(|p| p.1).collect();
        if let (Some(first), Some(last)) = (during.first(), during.last())
            && *first > 0.0
            && last / first >= c.latency_rise
        {
            let text = format!(
                "{name} is saturated while p95 latency rose {:.1}x: add replicas or GPUs.",
                last / first
            );
            out.push(give(
                advice("gpu_saturated", "latency", text, c.gpu_busy),
                run,
                None,
                busy,
            ));
        }
    }
    out
}

/// A queue that grows faster than it drains; replicas stuck starting.
fn queues_and_replicas(e: &Evidence, c: &ConsiderationsConfig) -> Vec<Json> {
    let mut out = Vec::new();
    for (panel, line, which) in [
        ("queue_size", &e.async_queue, "The async queue"),
        ("server_queue_size", &e.server_queue, "The server's queue"),
    ] {
        if let Some(run) = growing(line, e.step_s, c.queue_growth_for) {
            let (first, last) = (run.1[0], *run.1.last().unwrap_or(&0.0));
            let advice = Advice {
                id: "queue_growing",
                panel,
                text: format!("{which} grows faster than it drains: increase max replicas or autoscaling concurrency."),
                threshold: first,
                unit: "requests",
            };
            out.push(give(advice, run, Some(last), line));
        }
    }
    if let Some(run) = sustained(&e.starting, e.step_s, c.starting_for, |v| v > 0.0) {
        let advice = Advice {
            id: "replicas_starting",
            panel: "replicas",
            text: "Replicas have been starting for long: check their start-up (image pull, model load, health checks)."
                .into(),
            threshold: 0.0,
            unit: "replicas",
        };
        out.push(give(advice, run, None, &e.starting));
    }
    out
}

/// The latest run, lasting at least `min`, in which a queue never shrank and ended above where it began.
fn growing(line: &Line, step_s: f64, min: Duration) -> Option<(f64, Vec<f64>)> {
    let mut run = vec![*line.last()?];
    for w in line.windows(2).rev() {
        if w[0].1 > w[1].1 {
            break;
        }
        run.push(w[0]);
    }
    run.reverse();
    let (first, last) = (run[0], *run.last()?);
    let lasted = last.0 - first.0 + step_s;
    (lasted >= min.as_secs_f64() && last.1 > first.1).then(|| (first.0 - step_s, run.iter().map(|p| p.1).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(values: &[f64]) -> Line {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (1000.0 + 10.0 * i as f64, *v))
            .collect()
    }

    fn evidence() -> Evidence {
        Evidence {
            step_s: 10.0,
            cpu: Vec::new(),
            memory: Vec::new(),
            gpus: Vec::new(),
            latency_p95: Vec::new(),
            async_queue: Vec::new(),
            server_queue: Vec::new(),
            starting: Vec::new(),
        }
    }

    fn ids(list: &[Json]) -> Vec<&str> {
        list.iter().map(|c| c["id"].as_str().unwrap()).collect()
    }

    /// Each rule fires on the evidence it names, with the figure, threshold and since, and not on less.
    #[test]
    fn each_consideration_needs_its_evidence_sustained() {
        let c = ConsiderationsConfig {
            high_for: Duration::from_secs(60),
            low_for: Duration::from_secs(60),
            queue_growth_for: Duration::from_secs(60),
            starting_for: Duration::from_secs(60),
            ..Default::default()
        };
        assert!(considerations(&evidence(), &c).is_empty(), "no data, no advice");
        let mut busy = evidence();
        busy.cpu = line(&[0.2, 0.3, 0.9, 0.85, 0.95, 0.9, 0.88, 0.92]);
        busy.memory = line(&[0.5; 8]);
        let list = considerations(&busy, &c);
        assert_eq!(ids(&list), ["larger_instance"]);
        let evidence_of = &list[0]["evidence"];
        assert_eq!(evidence_of["threshold"], 0.8);
        assert_eq!(
            evidence_of["since"], 1010.0,
            "from the first step of the run (its start)"
        );
        assert_eq!(evidence_of["for_seconds"], 60.0);
        assert!((evidence_of["figure"].as_f64().unwrap() - 0.9).abs() < 0.01);
        // Five busy steps (50 s) are not a minute.
        busy.cpu = line(&[0.2, 0.3, 0.5, 0.9, 0.85, 0.95, 0.9, 0.88]);
        assert!(considerations(&busy, &c).is_empty());

        let mut idle = evidence();
        idle.cpu = line(&[0.02; 8]);
        idle.memory = line(&[0.1; 8]);
        assert_eq!(ids(&considerations(&idle, &c)), ["overprovisioned"]);
        idle.memory = line(&[0.5; 8]);
        assert!(
            considerations(&idle, &c).is_empty(),
            "idle CPU but busy memory is not overprovisioning"
        );

        let mut queued = evidence();
        queued.async_queue = line(&[0.0, 0.0, 3.0, 7.0, 7.0, 12.0, 20.0, 31.0]);
        let list = considerations(&queued, &c);
        assert_eq!(ids(&list), ["queue_growing"]);
        assert_eq!(list[0]["panel"], "queue_size");
        queued.async_queue = line(&[0.0, 0.0, 3.0, 7.0, 7.0, 12.0, 20.0, 5.0]);
        assert!(considerations(&queued, &c).is_empty(), "a queue that drains");

        let mut gpu = evidence();
        gpu.gpus = vec![("GPU 0".into(), line(&[0.95; 8]), line(&[0.97; 8]))];
        gpu.latency_p95 = line(&[0.2, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]);
        assert_eq!(ids(&considerations(&gpu, &c)), ["gpu_memory", "gpu_saturated"]);

        let mut starting = evidence();
        starting.starting = line(&[1.0; 8]);
        assert_eq!(ids(&considerations(&starting, &c)), ["replicas_starting"]);
    }
}
