//! A sliding window of exponential histograms by event time, for quantiles over `quantile_window`.
//!
//! The window is cut into `SLICES` slices; a value goes into the slice of its span's end time, and a snapshot
//! merges the slices that overlap `(now - window, now]`. Memory is bounded: at most `SLICES + 1` histograms of at
//! most `WINDOW_MAX_BUCKETS` buckets each.

use std::collections::VecDeque;
use std::time::Duration;

use infercol_pipelines::histogram::{ExpoHistogram, Indexed};

/// Slices per window: the window slides in steps of `quantile_window / SLICES`.
pub const SLICES: u64 = 6;
/// Scale of the window sketch: buckets are 2^(1/64) wide, a reported quantile is within 0.54% of the exact one.
pub const WINDOW_SCALE: i32 = 6;
/// At scale 6, 4096 buckets span 2^64: one series can range from 1 us to years, or 1 byte to exabytes, without
/// the sketch coarsening. Buckets are dense only between the lowest and highest value seen, so a series whose
/// values span one decade holds about 210 of them.
pub const WINDOW_MAX_BUCKETS: usize = 4096;

#[derive(Clone, Debug)]
pub struct QuantileWindow {
    slice_ns: u64,
    slices: VecDeque<(u64, ExpoHistogram<u32>)>,
}

impl QuantileWindow {
    pub fn new(window: Duration) -> QuantileWindow {
        QuantileWindow {
            slice_ns: (window.as_nanos() as u64 / SLICES).max(1),
            slices: VecDeque::new(),
        }
    }

    fn first_live(&self, now_ns: u64) -> u64 {
        (now_ns / self.slice_ns).saturating_sub(SLICES)
    }

    /// Records a value whose span ended at `end_ns`; false when that is already outside the window.
    #[cfg(test)]
    pub fn record(&mut self, end_ns: u64, now_ns: u64, value: f64, weight: u64) -> bool {
        self.record_indexed(end_ns, now_ns, Indexed::new(value), weight)
    }

    /// `record` for a value whose bucket index is computed already (see `Indexed`).
    pub fn record_indexed(&mut self, end_ns: u64, now_ns: u64, value: Indexed, weight: u64) -> bool {
        match self.slice_at(end_ns, now_ns) {
            Some(slice) => {
                slice.record_indexed(value, weight);
                true
            }
            None => false,
        }
    }

    /// Adds a whole histogram observed at `time_ns` (an agent's delta, at a gateway); false when outside the window.
    pub fn merge<C: infercol_pipelines::histogram::Count>(
        &mut self,
        time_ns: u64,
        now_ns: u64,
        h: &ExpoHistogram<C>,
    ) -> bool {
        match self.slice_at(time_ns, now_ns) {
            Some(slice) => {
                slice.merge(h);
                true
            }
            None => false,
        }
    }

    /// Adds the slices of `other` (a window of the same length) to this one's; slices already outside the
    /// window at `now_ns` are left out.
    pub fn absorb(&mut self, other: &QuantileWindow, now_ns: u64) {
        debug_assert_eq!(self.slice_ns, other.slice_ns);
        for (slice, h) in &other.slices {
            self.merge(slice * other.slice_ns, now_ns, h);
        }
    }

    /// The common case, without a division: the value's end lies in the newest slice or the one before, and that
    /// slice is still live at `now_ns` (now may have moved on to a slice no value has reached yet, as it does
    /// after every slice boundary until a span that ended after it arrives). Also the newest slice when the end
    /// is later still while now is in it (a clock ahead of ours). `None`: work it out in full.
    #[inline]
    fn recent_slice(&self, end_ns: u64, now_ns: u64) -> Option<usize> {
        let n = self.slices.len();
        let live_for = self.slice_ns.saturating_mul(SLICES + 1);
        for at in (n.saturating_sub(2)..n).rev() {
            let start = self.slices[at].0.saturating_mul(self.slice_ns);
            // Now before the slice (a clock behind ours), or past its life: the full path.
            let since = now_ns.checked_sub(start).filter(|&since| since < live_for)?;
            let Some(into) = end_ns.checked_sub(start) else {
                continue;
            };
            if into < self.slice_ns || (at + 1 == n && since < self.slice_ns) {
                return Some(at);
            }
            return None;
        }
        None
    }

    fn slice_at(&mut self, end_ns: u64, now_ns: u64) -> Option<&mut ExpoHistogram<u32>> {
        let n = self.slices.len();
        if n > 0 {
            let newest = self.slices[n - 1].0;
            let start = newest * self.slice_ns;
            if now_ns >= start && now_ns - start < self.slice_ns {
                if end_ns >= start {
                    return Some(&mut self.slices[n - 1].1);
                }
                if n >= 2 && self.slices[n - 2].0 + 1 == newest && end_ns >= start - self.slice_ns {
                    return Some(&mut self.slices[n - 2].1);
                }
            }
        }
        if let Some(at) = self.recent_slice(end_ns, now_ns) {
            return Some(&mut self.slices[at].1);
        }
        let now_slice = now_ns / self.slice_ns;
        // A clock ahead of ours puts the value in the current slice rather than in the future.
        let slice = (end_ns / self.slice_ns).min(now_slice);
        let first = self.first_live(now_ns);
        if slice < first {
            return None;
        }
        while self.slices.front().is_some_and(|(s, _)| *s < first) {
            self.slices.pop_front();
        }
        let at = match self.slices.binary_search_by_key(&slice, |(s, _)| *s) {
            Ok(at) => at,
            Err(at) => {
                self.slices
                    .insert(at, (slice, ExpoHistogram::new(WINDOW_MAX_BUCKETS, WINDOW_SCALE)));
                at
            }
        };
        Some(&mut self.slices[at].1)
    }

    /// The merged histogram of the values in the window ending at `now_ns`; `None` when it holds none.
    pub fn snapshot(&mut self, now_ns: u64) -> Option<ExpoHistogram<u32>> {
        let first = self.first_live(now_ns);
        while self.slices.front().is_some_and(|(s, _)| *s < first) {
            self.slices.pop_front();
        }
        let mut merged: Option<ExpoHistogram<u32>> = None;
        for (_, h) in &self.slices {
            match &mut merged {
                Some(m) => m.merge(h),
                None => merged = Some(h.clone()),
            }
        }
        merged.filter(|m| !m.is_empty())
    }

    pub fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }

    pub fn heap_bytes(&self) -> usize {
        self.slices.capacity() * std::mem::size_of::<(u64, ExpoHistogram<u32>)>()
            + self.slices.iter().map(|(_, h)| h.heap_bytes()).sum::<usize>()
    }
}

/// The summary point of a window's snapshot taken at `now_ns`: its count, sum and the configured quantiles.
pub fn summary_point(
    window: &ExpoHistogram<u32>,
    attributes: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
    now_ns: u64,
    length: Duration,
    quantiles: &[f64],
) -> opentelemetry_proto::tonic::metrics::v1::SummaryDataPoint {
    use opentelemetry_proto::tonic::metrics::v1::summary_data_point::ValueAtQuantile;
    opentelemetry_proto::tonic::metrics::v1::SummaryDataPoint {
        attributes,
        start_time_unix_nano: now_ns.saturating_sub(length.as_nanos() as u64),
        time_unix_nano: now_ns,
        count: window.count(),
        sum: window.sum(),
        quantile_values: quantiles
            .iter()
            .filter_map(|q| window.quantile(*q).map(|value| ValueAtQuantile { quantile: *q, value }))
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn old_values_leave_the_window() {
        let mut w = QuantileWindow::new(Duration::from_secs(60));
        let now = 1_000 * S;
        assert!(w.record(now - 5 * S, now, 1.0, 1));
        assert!(w.record(now - 30 * S, now, 2.0, 1));
        assert!(!w.record(now - 200 * S, now, 3.0, 1), "far older than the window");
        assert_eq!(w.snapshot(now).unwrap().count(), 2);
        // 65 s later the first value is gone, the second too; nothing remains.
        assert_eq!(w.snapshot(now + 40 * S).map(|h| h.count()), Some(1));
        assert!(w.snapshot(now + 80 * S).is_none());
    }

    /// Values go to the slice of their end time whether or not the newest slices exist yet (the fast path for the
    /// newest two slices and the general one agree), and leave the window slice by slice.
    #[test]
    fn each_value_in_its_slice() {
        let mut w = QuantileWindow::new(Duration::from_secs(60));
        let now = 1_000 * S + S / 2; // inside the slice [1000 s, 1010 s)
        assert!(w.record(now, now, 1.0, 1)); // creates the newest slice
        assert!(w.record(now - 5 * S, now, 2.0, 1)); // the slice before, created
        assert!(w.record(now - 6 * S, now, 3.0, 1)); // the slice before again: fast path
        assert!(w.record(now + 2 * S, now, 4.0, 1)); // the newest: fast path
        assert!(w.record(now - 25 * S, now, 5.0, 1)); // three slices back: general path
        let counts: Vec<(u64, u64)> = w.slices.iter().map(|(s, h)| (*s, h.count())).collect();
        assert_eq!(counts, vec![(97, 1), (99, 2), (100, 2)]);
        // Once now moves into a new slice, a value in the old newest one goes there, not to the new one.
        let later = now + 10 * S;
        assert!(w.record(later - 10 * S, later, 6.0, 1));
        assert!(w.record(later, later, 7.0, 1));
        let counts: Vec<(u64, u64)> = w.slices.iter().map(|(s, h)| (*s, h.count())).collect();
        assert_eq!(counts, vec![(97, 1), (99, 2), (100, 3), (101, 1)]);
        // The window (60 s) ending 55 s after slice 100 ends holds slices 100 and 101 only.
        assert_eq!(w.snapshot(1_065 * S).map(|h| h.count()), Some(4));
    }

    /// The division-free path agrees with the rule, whatever the order: each value goes to slice
    /// min(end, now) / slice length while that slice is live, over random ends around a clock that moves on
    /// (values late by up to 80 s, clocks ahead by up to 20 s, now crossing slice boundaries with no value yet).
    #[test]
    fn the_recent_slices_follow_the_rule() {
        let mut w = QuantileWindow::new(Duration::from_secs(60));
        let mut expected = std::collections::BTreeMap::<u64, u64>::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut now = 1_000 * S;
        for _ in 0..200_000 {
            now += next() % (S / 4);
            let end = (now + next() % (20 * S)).saturating_sub(next() % (100 * S));
            let slice = end.min(now) / (10 * S);
            let live = slice >= (now / (10 * S)).saturating_sub(SLICES);
            assert_eq!(w.record(end, now, 1.0, 1), live, "end {end}, now {now}");
            if live {
                *expected.entry(slice).or_default() += 1;
            }
            let first = w.first_live(now);
            expected.retain(|s, _| *s >= first);
            let held: std::collections::BTreeMap<u64, u64> = w
                .slices
                .iter()
                .filter(|(s, _)| *s >= first)
                .map(|(s, h)| (*s, h.count()))
                .collect();
            assert_eq!(held, expected, "now {now}");
        }
    }

    #[test]
    fn a_clock_ahead_counts_now() {
        let mut w = QuantileWindow::new(Duration::from_secs(60));
        let now = 1_000 * S;
        assert!(w.record(now + 3600 * S, now, 1.0, 1));
        assert_eq!(w.snapshot(now).unwrap().count(), 1);
    }
}
