//! The Prometheus text exposition format 0.0.4 and OpenMetrics 1.0.

use std::fmt::Write;

use super::store::{Exemplar, Family, FamilyType, Store, Value, classic_buckets};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

/// A float as Prometheus writes it.
pub fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        let s = format!("{v}");
        // Very small or large magnitudes print long in Rust's default form; exponent form is shorter and valid.
        if s.len() > 24 { format!("{v:e}") } else { s }
    }
}

/// A label value as the text format and PromQL's double-quoted strings escape it.
pub(crate) fn escape_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn labels(out: &mut String, labels: &[(String, String)], extra: Option<(&str, &str)>) {
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(extra) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        escape_value(v, out);
        out.push('"');
    }
    out.push('}');
}

fn exemplar(out: &mut String, format: Format, e: Option<&Exemplar>) {
    let (Format::OpenMetrics, Some(e)) = (format, e) else {
        return;
    };
    out.push_str(" # ");
    labels(out, &e.labels, None);
    if e.labels.is_empty() {
        out.push_str("{}");
    }
    let _ = write!(out, " {}", float(e.value));
    if e.time_ns > 0 {
        let _ = write!(out, " {:.3}", e.time_ns as f64 / 1e9);
    }
}

#[allow(clippy::too_many_arguments)]
fn sample(
    out: &mut String,
    format: Format,
    name: &str,
    suffix: &str,
    l: &[(String, String)],
    extra: Option<(&str, &str)>,
    value: &str,
    ex: Option<&Exemplar>,
) {
    out.push_str(name);
    out.push_str(suffix);
    labels(out, l, extra);
    out.push(' ');
    out.push_str(value);
    exemplar(out, format, ex);
    out.push('\n');
}

fn family(out: &mut String, format: Format, name: &str, f: &Family) {
    let (type_name, base) = match (f.kind, format) {
        (FamilyType::Counter, Format::OpenMetrics) => ("counter", name.strip_suffix("_total").unwrap_or(name)),
        (FamilyType::Counter, Format::Text) => ("counter", name),
        (FamilyType::Gauge, _) => ("gauge", name),
        (FamilyType::Info, Format::OpenMetrics) => ("info", name.strip_suffix("_info").unwrap_or(name)),
        (FamilyType::Info, Format::Text) => ("gauge", name),
        (FamilyType::Histogram, _) => ("histogram", name),
        (FamilyType::Summary, _) => ("summary", name),
    };
    let _ = writeln!(out, "# HELP {base} {}", escape_help(&f.help));
    let _ = writeln!(out, "# TYPE {base} {type_name}");
    if let (Format::OpenMetrics, Some(unit)) = (format, &f.unit) {
        let _ = writeln!(out, "# UNIT {base} {unit}");
    }
    for (l, value, exemplars) in f.series() {
        match value {
            Value::Number(v) => {
                let suffix = match (f.kind, format) {
                    (FamilyType::Counter, Format::OpenMetrics) => "_total",
                    (FamilyType::Info, Format::OpenMetrics) => "_info",
                    _ => "",
                };
                sample(out, format, base, suffix, l, None, &float(*v), exemplars.first());
            }
            Value::Classic {
                bounds,
                counts,
                sum,
                count,
            } => {
                let mut cumulative = 0;
                for (i, c) in counts.iter().enumerate() {
                    cumulative += c;
                    let le = bounds.get(i).copied().unwrap_or(f64::INFINITY);
                    let lower = if i == 0 { f64::NEG_INFINITY } else { bounds[i - 1] };
                    let ex = exemplars.iter().find(|e| e.value > lower && e.value <= le);
                    sample(
                        out,
                        format,
                        base,
                        "_bucket",
                        l,
                        Some(("le", &float(le))),
                        &cumulative.to_string(),
                        ex,
                    );
                }
                sample(out, format, base, "_sum", l, None, &float(*sum), None);
                sample(out, format, base, "_count", l, None, &count.to_string(), None);
            }
            Value::Native(h) => {
                let mut lower = f64::NEG_INFINITY;
                for (le, cumulative) in classic_buckets(h) {
                    let ex = exemplars.iter().find(|e| e.value > lower && e.value <= le);
                    sample(
                        out,
                        format,
                        base,
                        "_bucket",
                        l,
                        Some(("le", &float(le))),
                        &cumulative.to_string(),
                        ex,
                    );
                    lower = le;
                }
                sample(out, format, base, "_sum", l, None, &float(h.sum()), None);
                sample(out, format, base, "_count", l, None, &h.count().to_string(), None);
            }
            Value::Summary { quantiles, sum, count } => {
                for (q, v) in quantiles {
                    sample(
                        out,
                        format,
                        base,
                        "",
                        l,
                        Some(("quantile", &float(*q))),
                        &float(*v),
                        None,
                    );
                }
                sample(out, format, base, "_sum", l, None, &float(*sum), None);
                sample(out, format, base, "_count", l, None, &count.to_string(), None);
            }
        }
    }
}

/// The whole page, or as many whole families as fit in `max` bytes (then `true`: the page was cut).
pub fn render(store: &Store, format: Format, max: usize) -> (String, bool) {
    let mut out = String::with_capacity((256 * store.series_count() + 64).min(max));
    let mut cut = false;
    for (name, f) in store.families() {
        let before = out.len();
        family(&mut out, format, name, f);
        if out.len() > max {
            out.truncate(before);
            cut = true;
            break;
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    (out, cut)
}
