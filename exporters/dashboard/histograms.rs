//! The exponential histograms of the store: for each series (a histogram metric and its point's attributes), what
//! was recorded in each step, so that a percentile over a step, over a rolled-up step or over several series is
//! read from the merged buckets (within the sketch's bound at the merged scale), not averaged.
//!
//! A cumulative histogram (model_metrics' default) is turned into per-step deltas against its previous point, as
//! a cumulative sum is turned into increases; a delta histogram is kept as it is. Older steps are merged into the
//! same [`TIERS`](super::store::TIERS) as the points: merging is exact, so a rolled-up step's percentile is as good
//! as a fresh one's.

use std::collections::VecDeque;

use infercol_pipelines::histogram::{Count, ExpoHistogram};

use super::store::Origin;

/// Buckets a merged histogram may hold before it coarsens: enough for 64 buckets an octave over 64 octaves.
pub const MERGED_MAX_BUCKETS: usize = 4096;

#[derive(Debug)]
pub struct HistogramSeries {
    /// Its key on disk.
    pub id: u32,
    pub origin: Origin,
    /// What each step recorded, in time order.
    pub deltas: VecDeque<(i64, ExpoHistogram<u32>)>,
    /// A cumulative histogram's last (start time, point), to take the next step's delta from.
    pub last: Option<(u64, ExpoHistogram<u64>)>,
    /// Up to when (ms) each tier has merged this series' steps.
    pub rolled: [i64; 2],
    /// When its last point came (ms), empty or not: a quiet series is kept while it reports.
    pub seen: i64,
}

impl HistogramSeries {
    pub fn new(id: u32, origin: Origin) -> HistogramSeries {
        HistogramSeries {
            id,
            origin,
            deltas: VecDeque::new(),
            last: None,
            rolled: [0; 2],
            seen: 0,
        }
    }

    /// The step that `point` (seen at `t` ms; `start` its start time in ns when cumulative) adds, if any.
    pub fn step_of(&mut self, t: i64, point: ExpoHistogram<u64>, start: Option<u64>) -> Option<ExpoHistogram<u32>> {
        self.seen = self.seen.max(t);
        let all = |h: &ExpoHistogram<u64>| h.since(&ExpoHistogram::<u64>::new(2, h.scale()));
        let Some(start) = start else {
            return all(&point);
        };
        let delta = match &self.last {
            Some((s, previous)) if *s == start => point.since(previous).or_else(|| all(&point)),
            // First sight of a histogram that did not just start: a baseline, as for counters.
            None if super::store::is_baseline(start, t) => None,
            // First sight, or a restart: all of it is new.
            _ => all(&point),
        };
        self.last = Some((start, point));
        delta
            .filter(|d| d.count() > 0)
            .map(|d| d.with_max_size(MERGED_MAX_BUCKETS))
    }

    /// Merges the steps that have aged past each tier into that tier's steps; returns the steps merged away and
    /// the merged steps that replace them (keyed by their last step's time).
    pub fn roll_up(&mut self, now_ms: i64, tiers: &[(i64, i64)]) -> (Vec<i64>, Vec<i64>) {
        let (mut removed, mut replaced) = (Vec::new(), Vec::new());
        for (tier, (age, width)) in tiers.iter().enumerate() {
            let boundary = (now_ms - age).div_euclid(*width) * width;
            let from = self.rolled[tier];
            if boundary <= from {
                continue;
            }
            let mut out: VecDeque<(i64, ExpoHistogram<u32>)> = VecDeque::with_capacity(self.deltas.len());
            let mut steps = std::mem::take(&mut self.deltas).into_iter().peekable();
            while let Some((mut t, mut h)) = steps.next() {
                if t >= from && t < boundary {
                    let step = t.div_euclid(*width);
                    let mut combined = false;
                    while let Some((next_t, next)) =
                        steps.next_if(|(n, _)| *n < boundary && n.div_euclid(*width) == step)
                    {
                        removed.push(t);
                        h.merge(&next);
                        t = next_t;
                        combined = true;
                    }
                    if combined {
                        replaced.push(t);
                    }
                }
                out.push_back((t, h));
            }
            self.deltas = out;
            self.rolled[tier] = boundary;
        }
        (removed, replaced)
    }
}

/// A merged histogram to add steps into.
pub fn merged() -> ExpoHistogram<u64> {
    ExpoHistogram::new(MERGED_MAX_BUCKETS, infercol_pipelines::histogram::MAX_SCALE)
}

/// A histogram as bytes: scale, offset, zero count, count, sum, min, max, then the bucket counts.
pub fn encode<C: Count>(h: &ExpoHistogram<C>) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + h.bucket_counts().len() * 8);
    out.extend_from_slice(&h.scale().to_le_bytes());
    out.extend_from_slice(&h.offset().to_le_bytes());
    out.extend_from_slice(&h.zero_count().to_le_bytes());
    out.extend_from_slice(&h.count().to_le_bytes());
    out.extend_from_slice(&h.sum().to_le_bytes());
    out.extend_from_slice(&h.min().unwrap_or(0.0).to_le_bytes());
    out.extend_from_slice(&h.max().unwrap_or(0.0).to_le_bytes());
    for c in h.bucket_counts() {
        out.extend_from_slice(&c.get().to_le_bytes());
    }
    out
}

/// The histogram [`encode`] wrote, if `bytes` are one.
pub fn decode<C: Count>(bytes: &[u8]) -> Option<ExpoHistogram<C>> {
    let word = |at: usize| -> Option<[u8; 8]> { bytes.get(at..at + 8)?.try_into().ok() };
    let half = |at: usize| -> Option<[u8; 4]> { bytes.get(at..at + 4)?.try_into().ok() };
    let (scale, offset) = (i32::from_le_bytes(half(0)?), i32::from_le_bytes(half(4)?));
    let (zero, count) = (u64::from_le_bytes(word(8)?), u64::from_le_bytes(word(16)?));
    let (sum, min, max) = (
        f64::from_le_bytes(word(24)?),
        f64::from_le_bytes(word(32)?),
        f64::from_le_bytes(word(40)?),
    );
    let rest = bytes.get(48..)?;
    if rest.len() % 8 != 0 {
        return None;
    }
    let counts = rest
        .chunks_exact(8)
        .map(|c| {
            let mut n = C::default();
            n.add(u64::from_le_bytes(c.try_into().unwrap_or_default()));
            n
        })
        .collect();
    let known = count > 0;
    Some(
        ExpoHistogram::from_parts(
            scale,
            offset,
            counts,
            zero,
            count,
            sum,
            known.then_some(min),
            known.then_some(max),
        )
        .with_max_size(MERGED_MAX_BUCKETS),
    )
}
