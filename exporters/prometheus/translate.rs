//! OpenTelemetry to Prometheus names, as the OpenTelemetry Collector's translator makes them (with suffixes):
//! invalid characters become `_`; the unit becomes a suffix (`s` -> `seconds`, `By` -> `bytes`, `1` on a gauge ->
//! `ratio`, `x/y` -> `x_per_y`, `{...}` units add nothing) unless the name already holds it; monotonic sums end
//! in `_total`; a name or label starting with a digit gets a prefix.

/// The Prometheus word for an OTLP unit (UCUM), or `None` for units that add no suffix.
fn unit_word(unit: &str) -> Option<String> {
    let unit = unit.trim();
    if unit.is_empty() || unit.starts_with('{') {
        return None;
    }
    let word = match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "%" => "percent",
        "1" => return None,
        other => return Some(sanitize_tokens(other).join("_")).filter(|s| !s.is_empty()),
    };
    Some(word.to_string())
}

fn per_unit_word(unit: &str) -> Option<String> {
    let word = match unit.trim() {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => return unit_word(other),
    };
    Some(word.to_string())
}

/// Splits a name into its alphanumeric tokens (everything else separates).
fn sanitize_tokens(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_ascii_alphanumeric() && c != ':')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// What kind of OTLP metric a name is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    MonotonicSum,
    Gauge,
    Other,
}

/// The Prometheus family name of an OTLP metric.
pub fn metric_name(name: &str, unit: &str, kind: NameKind, namespace: &str, add_suffixes: bool) -> String {
    let mut tokens = sanitize_tokens(name);
    if add_suffixes {
        // `_total` goes last, once.
        if kind == NameKind::MonotonicSum {
            tokens.retain(|t| t != "total");
        }
        let (main, per) = match unit.split_once('/') {
            Some((m, p)) => (m, Some(p)),
            None => (unit, None),
        };
        let mut suffixes: Vec<String> = Vec::new();
        if let Some(w) = unit_word(main) {
            suffixes.extend(w.split('_').map(str::to_string));
        }
        if let Some(p) = per.and_then(per_unit_word) {
            suffixes.push("per".into());
            suffixes.extend(p.split('_').map(str::to_string));
        }
        let joined = tokens.join("_");
        let suffix = suffixes.join("_");
        if !suffix.is_empty() && !joined.ends_with(&suffix) && !tokens.contains(&suffix) {
            tokens.extend(suffixes);
        }
        if unit.trim() == "1" && kind == NameKind::Gauge && tokens.last().is_none_or(|t| t != "ratio") {
            tokens.push("ratio".into());
        }
        if kind == NameKind::MonotonicSum {
            tokens.push("total".into());
        }
    }
    let mut out = tokens.join("_");
    if !namespace.is_empty() {
        out = format!("{}_{out}", sanitize_tokens(namespace).join("_"));
    }
    if out.is_empty() {
        return "_".into();
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// A Prometheus label name for an attribute key.
pub fn label_name(key: &str) -> String {
    let mut out: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect();
    if out.is_empty() {
        return "key_empty".into();
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "key_");
    } else if out.starts_with('_') && !out.starts_with("__") {
        out.insert_str(0, "key");
    }
    out
}

/// Labels from attribute pairs: names sanitised, and keys that collide after sanitising joined with `;` in the
/// order of their original keys (as the Collector does); sorted by name.
pub fn labels(pairs: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut by_original: Vec<(String, String)> = pairs.into_iter().collect();
    by_original.sort();
    let mut out: Vec<(String, String)> = Vec::with_capacity(by_original.len());
    for (key, value) in by_original {
        let name = label_name(&key);
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push(';');
                v.push_str(&value);
            }
            None => out.push((name, value)),
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str, unit: &str, kind: NameKind) -> String {
        metric_name(n, unit, kind, "", true)
    }

    #[test]
    fn units_become_suffixes() {
        assert_eq!(
            name("model.request.duration", "s", NameKind::Other),
            "model_request_duration_seconds"
        );
        assert_eq!(
            name("model.request.size", "By", NameKind::Other),
            "model_request_size_bytes"
        );
        assert_eq!(
            name("http.server.duration", "ms", NameKind::Other),
            "http_server_duration_milliseconds"
        );
        assert_eq!(
            name("system.cpu.utilization", "1", NameKind::Gauge),
            "system_cpu_utilization_ratio"
        );
        assert_eq!(name("net.io", "By/s", NameKind::Gauge), "net_io_bytes_per_second");
        assert_eq!(name("queue.size", "{request}", NameKind::Gauge), "queue_size");
        assert_eq!(
            name("hw.gpu.memory.usage", "By", NameKind::Gauge),
            "hw_gpu_memory_usage_bytes"
        );
    }

    #[test]
    fn curly_units_add_nothing_and_counters_end_in_total() {
        assert_eq!(
            name("model.requests", "{request}", NameKind::MonotonicSum),
            "model_requests_total"
        );
        assert_eq!(
            name("requests.total", "{request}", NameKind::MonotonicSum),
            "requests_total"
        );
        assert_eq!(name("cpu.time", "s", NameKind::MonotonicSum), "cpu_time_seconds_total");
        assert_eq!(
            name("model.input_tokens", "{token}", NameKind::Other),
            "model_input_tokens"
        );
    }

    #[test]
    fn the_unit_is_not_added_twice() {
        assert_eq!(
            name("model.request.duration_seconds_window", "s", NameKind::Other),
            "model_request_duration_seconds_window"
        );
        assert_eq!(name("latency_seconds", "s", NameKind::Other), "latency_seconds");
    }

    #[test]
    fn digits_and_invalid_characters() {
        assert_eq!(name("2xx.count", "", NameKind::Gauge), "_2xx_count");
        assert_eq!(name("a-b/c d", "", NameKind::Gauge), "a_b_c_d");
        assert_eq!(label_name("http.status_code"), "http_status_code");
        assert_eq!(label_name("0day"), "key_0day");
        assert_eq!(label_name("_private"), "key_private");
        assert_eq!(label_name("__name__"), "__name__");
        assert_eq!(metric_name("x", "", NameKind::Gauge, "infer.col", true), "infer_col_x");
        assert_eq!(
            metric_name("model.requests", "{request}", NameKind::MonotonicSum, "", false),
            "model_requests"
        );
    }

    #[test]
    fn label_collisions_join_values() {
        let l = labels([
            ("k.8s".to_string(), "a".to_string()),
            ("k_8s".to_string(), "b".to_string()),
            ("model".to_string(), "m".to_string()),
        ]);
        assert_eq!(
            l,
            vec![
                ("k_8s".to_string(), "a;b".to_string()),
                ("model".to_string(), "m".to_string())
            ]
        );
    }
}
