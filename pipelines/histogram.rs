//! Base-2 exponential histograms: the structure behind model_metrics' exported OTLP ExponentialHistogram and its
//! sliding-window quantile sketch, and what exporters merge delta exponential histograms with.
//!
//! A bucket `i` at scale `s` holds the values in `(2^(i/2^s), 2^((i+1)/2^s)]`. Reporting a bucket by the point
//! `2·l·u/(l+u)` is off by at most `(b-1)/(b+1)` of the true value, `b = 2^(2^-s)`: 0.54% at scale 6. Buckets are
//! dense between the lowest and highest index seen; when that range would exceed `max_size`, the histogram halves
//! its resolution (scale - 1), exactly as the OpenTelemetry SDKs do, so memory is bounded by `max_size`.
//! Merging two histograms is exact at the lower of their scales: histograms from many agents merge losslessly.
//!
//! Written here rather than taken from a crate: the OpenTelemetry Rust SDK keeps its aggregator private, and the
//! sketch crates (DDSketch ports) do not produce OTLP's bucket layout, which exporting and merging need.

/// The finest scale OTLP allows.
pub const MAX_SCALE: i32 = 20;
/// The coarsest useful scale (each bucket spans 2^(2^10) at -10).
pub const MIN_SCALE: i32 = -10;

/// A bucket count: `u64` for exported histograms, `u32` for the window's slices (a slice never sees 4 billion
/// values in one bucket, and half the width halves the window's memory).
pub trait Count: Copy + Default + PartialEq + std::fmt::Debug + Send + Sync + 'static {
    fn add(&mut self, weight: u64);
    fn get(self) -> u64;
}

impl Count for u64 {
    fn add(&mut self, weight: u64) {
        *self = self.saturating_add(weight);
    }
    fn get(self) -> u64 {
        self
    }
}

impl Count for u32 {
    fn add(&mut self, weight: u64) {
        *self = self.saturating_add(u32::try_from(weight).unwrap_or(u32::MAX));
    }
    fn get(self) -> u64 {
        u64::from(self)
    }
}

/// The OTLP name of the quantile summary of the contract's histogram `name` with `unit`
/// (`model.request.duration` in `s` -> `model.request.duration_seconds_window`), so that the OpenTelemetry to
/// Prometheus translation gives the `<histogram family>_window` family. Every component that summarises a
/// contract histogram names it so.
pub fn window_name(name: &str, unit: &str) -> String {
    let unit_word = match unit {
        "s" => "_seconds",
        "By" => "_bytes",
        _ => "",
    };
    format!("{name}{unit_word}_window")
}

/// The metadata key of a window summary that states how far its quantiles can be from the exact ones, as a
/// relative error (a double): the sketch's bound for quantiles from spans, the bucket layout's for scraped ones.
/// Metadata, not an attribute: it describes the metric's method, and an attribute would become a label in
/// Prometheus and split the series.
pub const QUANTILE_ERROR_KEY: &str = "infercol.quantile.relative_error";

/// The bound on a quantile read from an exponential histogram at `scale` (see the module's note).
pub fn relative_error_at(scale: i32) -> f64 {
    let b = 2f64.powf(2f64.powi(-scale));
    (b - 1.0) / (b + 1.0)
}

/// The metadata that states a window summary's bound.
pub fn quantile_error_metadata(bound: f64) -> Vec<opentelemetry_proto::tonic::common::v1::KeyValue> {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    vec![KeyValue {
        key: QUANTILE_ERROR_KEY.into(),
        value: Some(AnyValue {
            value: Some(Value::DoubleValue(bound)),
        }),
        ..Default::default()
    }]
}

/// The bound a metric's metadata states, if it states one.
pub fn quantile_error_of(metric: &opentelemetry_proto::tonic::metrics::v1::Metric) -> Option<f64> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    metric
        .metadata
        .iter()
        .find(|kv| kv.key == QUANTILE_ERROR_KEY)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::DoubleValue(d) => Some(*d),
            _ => None,
        })
}

#[derive(Clone, Debug, PartialEq)]
pub struct ExpoHistogram<C: Count = u64> {
    max_size: usize,
    scale: i32,
    /// Index of `counts[0]`.
    offset: i32,
    counts: Vec<C>,
    zero_count: u64,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

/// The bucket index of a positive value at a scale.
pub fn bucket_index(value: f64, scale: i32) -> i32 {
    debug_assert!(value > 0.0);
    if scale > 0 {
        let scaled = value.log2() * f64::from(1u32 << scale);
        (ceil(scaled) - 1).clamp(i32::MIN as i64, i32::MAX as i64) as i32
    } else {
        let at_zero = ceil(value.log2()) - 1;
        (at_zero >> (-scale)).clamp(i32::MIN as i64, i32::MAX as i64) as i32
    }
}

/// `x.ceil() as i64` for the finite values `bucket_index` takes, without a call into libm (the baseline x86-64
/// target has no rounding instruction, so `f64::ceil` is a function call on the hot path).
#[inline(always)]
fn ceil(x: f64) -> i64 {
    let t = x as i64; // toward zero, saturating
    if (t as f64) < x { t + 1 } else { t }
}

/// A value with its bucket index, computed once for every exponential histogram the value goes to: a bucket at a
/// coarser scale `s` is exactly the run of `2^(scale - s)` buckets at the computed scale that an arithmetic shift
/// selects, so one index serves them all.
///
/// The index is computed at `TABLE_SCALE` from the value's bits and a table, without a logarithm: that is the
/// window's scale, and exported histograms are at it or coarser once their values span more than two octaves.
/// A histogram at a finer scale (a new series, or values in a narrow range) takes the logarithm at its own scale.
#[derive(Clone, Copy, Debug)]
pub struct Indexed {
    pub value: f64,
    index: i32,
    scale: i32,
}

/// The scale `Indexed` reads from a value's bits (64 buckets per octave).
pub const TABLE_SCALE: i32 = 6;

/// Where the bucket boundaries of `TABLE_SCALE` fall inside an octave. A normal double is `m * 2^e`, `m` in
/// [1, 2); the bucket within the octave is the count of boundaries `2^(j/64)` (j = 0..63) that `m` exceeds. The
/// octave is cut into 128 equal cells by the top 7 bits of the mantissa; boundaries are at least 2^(1/64) - 1 =
/// 0.0109 apart and a cell is 1/128 = 0.0078 wide, so a cell holds at most one: the count below the cell, plus
/// one comparison with the boundary inside it.
struct OctaveCells {
    below: [u8; 128],
    /// The boundary inside the cell, or infinity when there is none.
    boundary: [f64; 128],
}

static OCTAVE_CELLS: std::sync::LazyLock<OctaveCells> = std::sync::LazyLock::new(|| {
    let per_octave = 1u32 << TABLE_SCALE;
    let boundaries: Vec<f64> = (0..per_octave)
        .map(|j| (f64::from(j) / f64::from(per_octave)).exp2())
        .collect();
    let mut cells = OctaveCells {
        below: [0; 128],
        boundary: [f64::INFINITY; 128],
    };
    for cell in 0..128 {
        let start = 1.0 + cell as f64 / 128.0;
        let end = 1.0 + (cell + 1) as f64 / 128.0;
        cells.below[cell] = boundaries.iter().filter(|b| **b < start).count() as u8;
        if let Some(b) = boundaries.iter().find(|b| **b >= start && **b < end) {
            cells.boundary[cell] = *b;
        }
    }
    cells
});

/// `bucket_index(value, TABLE_SCALE)` for a positive normal double, from its bits; `None` for a subnormal one
/// (or infinity), which the logarithm handles.
#[inline]
fn table_index(value: f64) -> Option<i32> {
    let bits = value.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    if biased == 0 || biased == 0x7ff {
        return None;
    }
    let mantissa = bits & ((1 << 52) - 1);
    let m = f64::from_bits(mantissa | (1023 << 52));
    let cell = (mantissa >> 45) as usize;
    let cells = &*OCTAVE_CELLS;
    let within = i32::from(cells.below[cell]) + i32::from(m > cells.boundary[cell]);
    Some(((biased - 1023) << TABLE_SCALE) + within - 1)
}

impl Indexed {
    /// `value` must be finite and >= 0.
    #[inline]
    pub fn new(value: f64) -> Indexed {
        if value <= 0.0 {
            return Indexed {
                value,
                index: 0,
                scale: MAX_SCALE,
            };
        }
        match table_index(value) {
            Some(index) => Indexed {
                value,
                index,
                scale: TABLE_SCALE,
            },
            None => Indexed {
                value,
                index: bucket_index(value, MAX_SCALE),
                scale: MAX_SCALE,
            },
        }
    }

    /// The bucket index at `scale`.
    #[inline]
    fn at(self, scale: i32) -> i32 {
        if scale <= self.scale {
            self.index >> (self.scale - scale)
        } else {
            bucket_index(self.value, scale)
        }
    }
}

/// The lower boundary of bucket `index` at `scale` (exclusive).
pub fn bucket_lower(index: i32, scale: i32) -> f64 {
    (f64::from(index) / 2f64.powi(scale)).exp2()
}

impl ExpoHistogram<u64> {
    /// This histogram as an OTLP point (positive buckets; an empty negative range), from `start` to `time` (ns).
    pub fn to_otlp(
        &self,
        attributes: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
        start: u64,
        time: u64,
    ) -> opentelemetry_proto::tonic::metrics::v1::ExponentialHistogramDataPoint {
        use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
        opentelemetry_proto::tonic::metrics::v1::ExponentialHistogramDataPoint {
            attributes,
            start_time_unix_nano: start,
            time_unix_nano: time,
            count: self.count,
            sum: Some(self.sum),
            scale: self.scale,
            zero_count: self.zero_count,
            positive: Some(Buckets {
                offset: self.offset,
                bucket_counts: self.counts.clone(),
            }),
            negative: Some(Buckets::default()),
            min: self.min(),
            max: self.max(),
            ..Default::default()
        }
    }

    /// The positive buckets of an OTLP exponential histogram point (negative values are not recorded here).
    pub fn from_otlp(p: &opentelemetry_proto::tonic::metrics::v1::ExponentialHistogramDataPoint) -> ExpoHistogram<u64> {
        let (offset, counts) = p
            .positive
            .as_ref()
            .map_or((0, Vec::new()), |b| (b.offset, b.bucket_counts.clone()));
        ExpoHistogram::from_parts(
            p.scale,
            offset,
            counts,
            p.zero_count,
            p.count,
            p.sum.unwrap_or(0.0),
            p.min,
            p.max,
        )
    }
}

impl<C: Count> ExpoHistogram<C> {
    /// An empty histogram that starts at `scale` and keeps at most `max_size` buckets.
    pub fn new(max_size: usize, scale: i32) -> ExpoHistogram<C> {
        ExpoHistogram {
            max_size: max_size.max(2),
            scale: scale.clamp(MIN_SCALE, MAX_SCALE),
            offset: 0,
            counts: Vec::new(),
            zero_count: 0,
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// A histogram from the parts of an OTLP exponential histogram point (positive buckets).
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        scale: i32,
        offset: i32,
        counts: Vec<C>,
        zero_count: u64,
        count: u64,
        sum: f64,
        min: Option<f64>,
        max: Option<f64>,
    ) -> ExpoHistogram<C> {
        ExpoHistogram {
            max_size: counts.len().max(160),
            scale: scale.clamp(MIN_SCALE, MAX_SCALE),
            offset,
            counts,
            zero_count,
            count,
            sum,
            min: min.unwrap_or(f64::INFINITY),
            max: max.unwrap_or(f64::NEG_INFINITY),
        }
    }

    /// The same histogram, keeping at most `max_size` buckets from now on (a merged one must not coarsen).
    pub fn with_max_size(mut self, max_size: usize) -> ExpoHistogram<C> {
        self.max_size = max_size.max(self.counts.len()).max(2);
        self
    }

    pub fn scale(&self) -> i32 {
        self.scale
    }
    pub fn offset(&self) -> i32 {
        self.offset
    }
    pub fn bucket_counts(&self) -> &[C] {
        &self.counts
    }
    pub fn zero_count(&self) -> u64 {
        self.zero_count
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn sum(&self) -> f64 {
        self.sum
    }
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Heap bytes held by the buckets.
    pub fn heap_bytes(&self) -> usize {
        self.counts.capacity() * std::mem::size_of::<C>()
    }

    /// Records `value` (finite, >= 0) `weight` times.
    pub fn record(&mut self, value: f64, weight: u64) {
        self.record_indexed(Indexed::new(value), weight);
    }

    /// Records a value whose index was computed once for several histograms (see `Indexed`).
    pub fn record_indexed(&mut self, indexed: Indexed, weight: u64) {
        let value = indexed.value;
        debug_assert!(value.is_finite() && value >= 0.0);
        self.count += weight;
        self.sum += value * weight as f64;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if value == 0.0 {
            self.zero_count += weight;
            return;
        }
        let index = indexed.at(self.scale);
        // The common case inline: the bucket is in the dense range already (no call to `make_room`).
        let at = i64::from(index) - i64::from(self.offset);
        if at >= 0 && (at as usize) < self.counts.len() {
            self.counts[at as usize].add(weight);
            return;
        }
        let index = self.make_room(index, index);
        let at = (index - self.offset) as usize;
        self.counts[at].add(weight);
    }

    /// Makes the dense range cover `[lo, hi]` (indices at the current scale), downscaling when it would exceed
    /// `max_size`; returns `lo` at the resulting scale (the caller's single index when lo == hi).
    fn make_room(&mut self, lo: i32, hi: i32) -> i32 {
        let (cur_lo, cur_hi) = if self.counts.is_empty() {
            (lo, hi)
        } else {
            (
                self.offset.min(lo),
                (self.offset + self.counts.len() as i32 - 1).max(hi),
            )
        };
        let mut shift = 0;
        while (((cur_hi >> shift) as i64) - ((cur_lo >> shift) as i64) + 1) as usize > self.max_size
            && self.scale - shift > MIN_SCALE
        {
            shift += 1;
        }
        if shift > 0 {
            self.downscale(shift);
        }
        let (lo, hi) = (lo >> shift, hi >> shift);
        if self.counts.is_empty() {
            self.offset = lo;
            self.counts = vec![C::default(); (hi - lo + 1) as usize];
            return lo;
        }
        if lo < self.offset {
            let grow = (self.offset - lo) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(C::default(), grow));
            self.offset = lo;
        }
        let end = self.offset + self.counts.len() as i32 - 1;
        if hi > end {
            self.counts
                .resize(self.counts.len() + (hi - end) as usize, C::default());
        }
        lo
    }

    /// Halves the resolution `by` times: bucket i becomes i >> by.
    pub fn downscale(&mut self, by: i32) {
        if by <= 0 {
            return;
        }
        self.scale -= by;
        if self.counts.is_empty() {
            return;
        }
        let new_offset = self.offset >> by;
        let new_end = (self.offset + self.counts.len() as i32 - 1) >> by;
        let mut merged = vec![C::default(); (new_end - new_offset + 1) as usize];
        for (i, c) in self.counts.iter().enumerate() {
            merged[(((self.offset + i as i32) >> by) - new_offset) as usize].add(c.get());
        }
        self.offset = new_offset;
        self.counts = merged;
    }

    /// Adds `other` into `self`, at the lower of the two scales.
    pub fn merge<D: Count>(&mut self, other: &ExpoHistogram<D>) {
        if other.count == 0 {
            return;
        }
        if other.scale < self.scale {
            self.downscale(self.scale - other.scale);
        }
        let shift = other.scale - self.scale;
        if !other.counts.is_empty() {
            let lo = other.offset >> shift;
            let hi = (other.offset + other.counts.len() as i32 - 1) >> shift;
            self.make_room(lo, hi);
            // make_room may have downscaled further.
            let shift = other.scale - self.scale;
            for (i, c) in other.counts.iter().enumerate() {
                if c.get() > 0 {
                    let index = (other.offset + i as i32) >> shift;
                    self.counts[(index - self.offset) as usize].add(c.get());
                }
            }
        }
        self.zero_count += other.zero_count;
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// What was recorded between `earlier` and `self`, two points of one cumulative histogram (at the coarser of
    /// their scales), as `u32` counts; `None` when `self` holds less than `earlier` (a restart). Its min and max
    /// are the bounds of its outermost buckets: a cumulative point's min and max are of all time.
    pub fn since<D: Count>(&self, earlier: &ExpoHistogram<D>) -> Option<ExpoHistogram<u32>> {
        if self.count < earlier.count || self.zero_count < earlier.zero_count {
            return None;
        }
        let scale = self.scale.min(earlier.scale);
        let at = |h: &ExpoHistogram<C>| -> ExpoHistogram<u64> {
            let mut copy = ExpoHistogram::<u64>::from_parts(
                h.scale,
                h.offset,
                h.counts.iter().map(|c| c.get()).collect(),
                h.zero_count,
                h.count,
                h.sum,
                None,
                None,
            );
            copy.downscale(h.scale - scale);
            copy
        };
        let now = at(self);
        let mut then = ExpoHistogram::<u64>::from_parts(
            earlier.scale,
            earlier.offset,
            earlier.counts.iter().map(|c| c.get()).collect(),
            earlier.zero_count,
            earlier.count,
            earlier.sum,
            None,
            None,
        );
        then.downscale(earlier.scale - scale);
        let mut counts: Vec<u32> = Vec::with_capacity(now.counts.len());
        for (i, c) in now.counts.iter().enumerate() {
            let index = now.offset + i as i32;
            let before = index
                .checked_sub(then.offset)
                .and_then(|j| then.counts.get(j as usize))
                .copied()
                .unwrap_or(0);
            if *c < before {
                return None;
            }
            counts.push((c - before).min(u32::MAX as u64) as u32);
        }
        // Leading and trailing empty buckets go: a quiet step keeps only what it recorded.
        let first = counts.iter().position(|c| *c > 0);
        let last = counts.iter().rposition(|c| *c > 0);
        let (offset, counts) = match (first, last) {
            (Some(f), Some(l)) => (now.offset + f as i32, counts[f..=l].to_vec()),
            _ => (0, Vec::new()),
        };
        let zero_count = now.zero_count - then.zero_count;
        let count = now.count - then.count;
        let (min, max) = if counts.is_empty() {
            (0.0, 0.0)
        } else if zero_count > 0 {
            (0.0, bucket_lower(offset + counts.len() as i32, scale))
        } else {
            (
                bucket_lower(offset, scale),
                bucket_lower(offset + counts.len() as i32, scale),
            )
        };
        let mut delta = ExpoHistogram::from_parts(
            scale,
            offset,
            counts,
            zero_count,
            count,
            (now.sum - then.sum).max(0.0),
            Some(min),
            Some(max),
        );
        delta.max_size = self.max_size.max(delta.counts.len());
        Some(delta)
    }

    /// The value at quantile `q` (0..=1): the element of rank `floor(q·(n-1))` (0-based) of the sorted values,
    /// within the bucket's relative error, and never outside the exact min and max.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * (self.count - 1) as f64).floor() as u64;
        // The extremes are known exactly.
        if rank == 0 {
            return Some(self.min);
        }
        if rank == self.count - 1 {
            return Some(self.max);
        }
        if rank < self.zero_count {
            return Some(0.0);
        }
        let mut seen = self.zero_count;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.get();
            if rank < seen {
                let index = self.offset + i as i32;
                let lower = bucket_lower(index, self.scale);
                let upper = bucket_lower(index + 1, self.scale);
                let point = 2.0 * lower * upper / (lower + upper);
                return Some(point.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

/// A histogram with explicit bucket bounds: counts of `(bounds[i-1], bounds[i]]`, the last bucket unbounded.
#[derive(Clone, Debug, PartialEq)]
pub struct ExplicitHistogram {
    pub bounds: std::sync::Arc<[f64]>,
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl ExplicitHistogram {
    pub fn new(bounds: std::sync::Arc<[f64]>) -> ExplicitHistogram {
        let n = bounds.len() + 1;
        ExplicitHistogram {
            bounds,
            counts: vec![0; n],
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    pub fn record(&mut self, value: f64, weight: u64) {
        let at = self.bounds.partition_point(|b| *b < value);
        self.counts[at] += weight;
        self.count += weight;
        self.sum += value * weight as f64;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Adds the counts of `other`, which has the same bounds.
    pub fn merge(&mut self, other: &ExplicitHistogram) {
        debug_assert_eq!(self.bounds, other.bounds);
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64: the tests' random values.
    fn xorshift(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// The index computed once (from the table, or at `MAX_SCALE` for a subnormal value) and shifted is the index
    /// the logarithm gives at each scale.
    #[test]
    fn one_index_serves_every_scale() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..100_000 {
            let x = xorshift(&mut x);
            // Values from 1e-9 to 1e9, and exact powers of two (bucket boundaries).
            let v = if x.is_multiple_of(10) {
                2f64.powi((x % 61) as i32 - 30)
            } else {
                10f64.powf((x >> 11) as f64 / (1u64 << 53) as f64 * 18.0 - 9.0)
            };
            for scale in [MIN_SCALE, -3, 0, 3, 6, 12, MAX_SCALE] {
                assert_eq!(
                    Indexed::new(v).at(scale),
                    bucket_index(v, scale),
                    "{v} at scale {scale}"
                );
            }
        }
    }

    /// The table's index is the logarithm's over the whole range of doubles (random bit patterns), and exact at
    /// powers of two and the doubles on either side of them, where the logarithm rounds the one above down onto
    /// the power (so it puts that value one bucket low; the table does not).
    #[test]
    fn the_table_index_is_exact() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200_000 {
            let x = xorshift(&mut x);
            let v = f64::from_bits(x >> 1); // positive: any exponent, any mantissa
            if !(v.is_finite() && v > 0.0) {
                continue;
            }
            for scale in [MIN_SCALE, -1, 0, 1, 5, TABLE_SCALE, 7, MAX_SCALE] {
                assert_eq!(
                    Indexed::new(v).at(scale),
                    bucket_index(v, scale),
                    "{v:e} at scale {scale}"
                );
            }
        }
        // (-1022 up: normal doubles, which the table reads; below, subnormal ones take the logarithm, exact at
        // powers of two.)
        for e in -1022..1024 {
            let p = 2f64.powi(e);
            for scale in [MIN_SCALE, -1, 0, 1, 5, TABLE_SCALE] {
                // 2^e closes the bucket below it; the double above it opens the next one.
                let (at, above) = if scale >= 0 {
                    ((e << scale) - 1, e << scale)
                } else {
                    ((e - 1) >> -scale, e >> -scale)
                };
                assert_eq!(Indexed::new(p).at(scale), at, "2^{e} at scale {scale}");
                assert_eq!(
                    Indexed::new(p.next_down()).at(scale),
                    at,
                    "below 2^{e} at scale {scale}"
                );
                assert_eq!(
                    Indexed::new(p.next_up()).at(scale),
                    above,
                    "above 2^{e} at scale {scale}"
                );
            }
        }
        for v in [f64::MIN_POSITIVE / 3.0, 5e-324, f64::MAX] {
            assert_eq!(Indexed::new(v).at(0), bucket_index(v, 0), "{v:e}");
        }
    }

    #[test]
    fn ceil_without_libm_is_ceil() {
        for x in [
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.0,
            -1.0,
            1.5,
            -1.5,
            2.0 - 1e-15,
            -2.0 + 1e-15,
            1e15 + 0.5,
            -1e15 - 0.5,
        ] {
            assert_eq!(ceil(x), x.ceil() as i64, "{x}");
        }
    }

    #[test]
    fn bucket_boundaries_are_upper_inclusive() {
        for scale in [-2, 0, 3, 6] {
            for k in -5..5 {
                let v = 2f64.powi(k);
                let i = bucket_index(v, scale);
                assert!(
                    bucket_lower(i, scale) < v && v <= bucket_lower(i + 1, scale) * (1.0 + 1e-12),
                    "{v} {scale}"
                );
            }
        }
    }

    #[test]
    fn downscales_to_stay_within_max_size_and_merges_exactly() {
        let mut h: ExpoHistogram = ExpoHistogram::new(160, MAX_SCALE);
        for v in [1e-3, 1.0, 100.0, 1e4] {
            h.record(v, 1);
        }
        assert!(h.bucket_counts().len() <= 160);
        assert!(
            h.scale() <= 3,
            "1 ms .. 10^4 s needs a coarse scale in 160 buckets, got {}",
            h.scale()
        );
        assert_eq!(h.count(), 4);
        let mut a: ExpoHistogram = ExpoHistogram::new(160, MAX_SCALE);
        let mut b: ExpoHistogram = ExpoHistogram::new(160, MAX_SCALE);
        let mut all: ExpoHistogram = ExpoHistogram::new(160, MAX_SCALE);
        for i in 1..1000 {
            let v = (i as f64) * 0.37;
            if i % 2 == 0 {
                a.record(v, 1)
            } else {
                b.record(v, 1)
            }
            all.record(v, 1);
        }
        a.merge(&b);
        all.downscale(all.scale() - a.scale());
        assert_eq!(a.scale(), all.scale());
        assert_eq!(a.bucket_counts().iter().sum::<u64>(), 999);
        assert_eq!(a.bucket_counts(), all.bucket_counts());
        assert_eq!(a.offset(), all.offset());
    }

    #[test]
    fn zero_values_and_single_values() {
        let mut h: ExpoHistogram = ExpoHistogram::new(2048, 6);
        h.record(0.0, 3);
        h.record(5.0, 1);
        assert_eq!(h.quantile(0.5), Some(0.0));
        assert_eq!(h.quantile(1.0), Some(5.0));
        let mut one: ExpoHistogram<u32> = ExpoHistogram::new(2048, 6);
        one.record(0.123, 1);
        assert_eq!(one.quantile(0.99), Some(0.123), "clamped to the exact min/max");
    }

    #[test]
    fn explicit_buckets_are_upper_inclusive() {
        let mut h = ExplicitHistogram::new(vec![1.0, 2.0, 5.0].into());
        for v in [0.5, 1.0, 1.5, 2.0, 9.0] {
            h.record(v, 1);
        }
        assert_eq!(h.counts, vec![2, 2, 0, 1]);
    }
}
