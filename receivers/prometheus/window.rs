//! Window quantiles from a server's classic buckets: the difference between the newest cumulative bucket counts and
//! those at the start of `quantile_window` holds the requests that ended in the window; a quantile is read from it
//! as Prometheus' `histogram_quantile` reads one (linear within the bucket it falls in). Its error is bounded by the
//! bucket layout, not by us: a value anywhere in (lower, upper] is reported between those bounds, so the relative
//! error is at most (upper - lower) / lower. [`worst_relative_error`] states that bound for a layout.

use std::collections::VecDeque;

/// Cumulative bucket counts at one scrape: `(upper bound, count of values <= it)`, ending with +Inf.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub at_ns: u64,
    pub buckets: Vec<(f64, f64)>,
}

/// The snapshots of one series over the window, oldest first.
#[derive(Default)]
pub struct BucketWindow {
    snapshots: VecDeque<Snapshot>,
}

impl BucketWindow {
    /// Adds a scrape's counts and drops what the window no longer needs: the newest snapshot at or before the
    /// window's start is kept as its baseline. A count lower than the previous one (the server restarted) starts
    /// the window again from nothing.
    pub fn push(&mut self, snapshot: Snapshot, window_ns: u64) {
        let restarted = self.snapshots.back().is_some_and(|last| {
            last.buckets.len() != snapshot.buckets.len()
                || last
                    .buckets
                    .iter()
                    .zip(&snapshot.buckets)
                    .any(|(a, b)| b.1 < a.1 || a.0 != b.0)
        });
        if restarted {
            self.snapshots.clear();
            let zero = Snapshot {
                at_ns: snapshot.at_ns,
                buckets: snapshot.buckets.iter().map(|(b, _)| (*b, 0.0)).collect(),
            };
            self.snapshots.push_back(zero);
        }
        self.snapshots.push_back(snapshot);
        let start = self.snapshots.back().map_or(0, |s| s.at_ns.saturating_sub(window_ns));
        while self.snapshots.len() > 2 && self.snapshots[1].at_ns <= start {
            self.snapshots.pop_front();
        }
    }

    /// When the last scrape's counts were pushed.
    pub fn last_at(&self) -> Option<u64> {
        self.snapshots.back().map(|s| s.at_ns)
    }

    /// The per-bucket counts of the values that ended in the window (cumulative, as on the page).
    pub fn delta(&self) -> Option<Vec<(f64, f64)>> {
        let (first, last) = (self.snapshots.front()?, self.snapshots.back()?);
        if self.snapshots.len() < 2 {
            return None;
        }
        Some(
            last.buckets
                .iter()
                .zip(&first.buckets)
                .map(|((bound, now), (_, then))| (*bound, (now - then).max(0.0)))
                .collect(),
        )
    }
}

/// The `q` quantile of cumulative bucket counts, as `histogram_quantile` computes it; None without values.
pub fn quantile(q: f64, cumulative: &[(f64, f64)]) -> Option<f64> {
    let total = cumulative.last()?.1;
    if total <= 0.0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(upper, count) in cumulative {
        if count >= rank {
            if upper.is_infinite() {
                // Above the highest finite bound nothing is known: that bound is the answer, as in Prometheus.
                return Some(lower.0);
            }
            let lower_bound = if lower.0 == 0.0 && upper <= 0.0 { upper } else { lower.0 };
            let in_bucket = count - lower.1;
            if in_bucket <= 0.0 {
                return Some(upper);
            }
            return Some(lower_bound + (upper - lower_bound) * (rank - lower.1) / in_bucket);
        }
        lower = (upper, count);
    }
    Some(lower.0)
}

/// The largest relative error a quantile interpolated in this layout can have: over adjacent finite bounds,
/// (upper - lower) / lower; the first bucket (from 0) is left out, where any relative error is possible.
pub fn worst_relative_error(bounds: &[f64]) -> f64 {
    bounds
        .windows(2)
        .filter(|w| w[0] > 0.0 && w[1].is_finite())
        .map(|w| (w[1] - w[0]) / w[0])
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(at_s: u64, counts: &[f64]) -> Snapshot {
        let bounds = [0.1, 0.5, 1.0, f64::INFINITY];
        Snapshot {
            at_ns: at_s * 1_000_000_000,
            buckets: bounds.iter().copied().zip(counts.iter().copied()).collect(),
        }
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_as_histogram_quantile_does() {
        let c = [(0.1, 10.0), (0.5, 60.0), (1.0, 90.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(0.1, &c), Some(0.1));
        assert!((quantile(0.5, &c).unwrap() - (0.1 + 0.4 * 40.0 / 50.0)).abs() < 1e-12);
        assert_eq!(quantile(0.99, &c), Some(1.0), "above the last finite bound: that bound");
        assert_eq!(quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
    }

    #[test]
    fn the_window_holds_the_deltas_since_its_start_and_restarts_from_nothing() {
        let window = 60_000_000_000;
        let mut w = BucketWindow::default();
        w.push(snap(0, &[5.0, 10.0, 10.0, 10.0]), window);
        assert_eq!(w.delta(), None, "one scrape: nothing ended in the window yet");
        w.push(snap(30, &[5.0, 20.0, 30.0, 30.0]), window);
        w.push(snap(90, &[6.0, 21.0, 31.0, 40.0]), window);
        // The baseline is the scrape at 30 s (the newest at or before the window's start, 30 s).
        assert_eq!(
            w.delta().unwrap().iter().map(|b| b.1).collect::<Vec<_>>(),
            vec![1.0, 1.0, 1.0, 10.0]
        );
        w.push(snap(100, &[1.0, 1.0, 2.0, 2.0]), window);
        assert_eq!(
            w.delta().unwrap().iter().map(|b| b.1).collect::<Vec<_>>(),
            vec![1.0, 1.0, 2.0, 2.0],
            "after a restart the window counts from zero"
        );
    }

    #[test]
    fn the_error_bound_follows_the_layout() {
        assert!((worst_relative_error(&[0.1, 0.25, 0.5, 1.0]) - 1.5).abs() < 1e-12);
        assert_eq!(worst_relative_error(&[1.0]), 0.0);
    }
}
