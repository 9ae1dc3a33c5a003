//! The Prometheus text exposition format (0.0.4) and OpenMetrics text (1.0), parsed into families of samples.
//!
//! Written here because no maintained crate with a license we can ship parses both correctly: `prometheus-parse`
//! splits label sets on `,` and `=` (a quoted value holding either, or an escaped quote, is cut apart) and leaves a
//! histogram's `_sum` and `_count` outside its family; `openmetrics-parser` is LGPL-3.0. The format is small: a
//! line is a comment (`# HELP`, `# TYPE`, OpenMetrics' `# UNIT` and `# EOF`) or a sample
//! `name{label="value",...} value [timestamp]`, with OpenMetrics' exemplar (` # {...} value [ts]`) after it.
//! Every input is bounded by the caller's limits: what exceeds them is an error, not a truncated page.

use std::collections::HashMap;

/// A family's type, from its `# TYPE` line (untyped without one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FamilyType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl FamilyType {
    fn parse(s: &str) -> FamilyType {
        match s {
            "counter" => FamilyType::Counter,
            "gauge" => FamilyType::Gauge,
            "histogram" | "gaugehistogram" => FamilyType::Histogram,
            "summary" => FamilyType::Summary,
            _ => FamilyType::Untyped,
        }
    }

    /// The sample name suffixes a family of this type may carry.
    fn suffixes(self) -> &'static [&'static str] {
        match self {
            FamilyType::Counter => &["_total", "_created", ""],
            FamilyType::Histogram => &["_bucket", "_sum", "_count", "_created", "_gsum", "_gcount"],
            FamilyType::Summary => &["_sum", "_count", "_created", ""],
            FamilyType::Gauge | FamilyType::Untyped => &[""],
        }
    }
}

/// A sample's labels, in page order.
pub type LabelSet = Vec<(String, String)>;

/// One sample line: its name's suffix within the family (`_bucket`, `_sum`, ... or empty), its labels in page
/// order, the value and the timestamp in milliseconds when the page gave one.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub suffix: String,
    pub labels: LabelSet,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: FamilyType,
    pub help: String,
    pub samples: Vec<Sample>,
}

/// What a page may hold at most.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_samples: usize,
    pub max_line_bytes: usize,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: {what}")]
    Malformed { line: usize, what: String },
    #[error("more than {0} samples on the page (sample_limit)")]
    TooManySamples(usize),
    #[error("line {0} is longer than {1} bytes")]
    LineTooLong(usize, usize),
    #[error("sample `{name}` with labels {labels} appears twice")]
    Duplicate { name: String, labels: String },
}

/// Parses a page. `openmetrics` reads OpenMetrics text (timestamps in seconds, `# EOF`); otherwise text 0.0.4.
pub fn parse(page: &str, openmetrics: bool, limits: Limits) -> Result<Vec<Family>, ParseError> {
    let mut families: Vec<Family> = Vec::new();
    // Family index by name, and the series seen (to refuse duplicates, as Prometheus does).
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut seen: std::collections::HashSet<(String, LabelSet)> = Default::default();
    let mut samples = 0usize;
    for (index, line) in page.lines().enumerate() {
        let number = index + 1;
        if line.len() > limits.max_line_bytes {
            return Err(ParseError::LineTooLong(number, limits.max_line_bytes));
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            if openmetrics && comment.trim() == "EOF" {
                break;
            }
            read_comment(comment, &mut families, &mut by_name);
            continue;
        }
        let (name, sample) =
            read_sample(line, openmetrics).map_err(|what| ParseError::Malformed { line: number, what })?;
        samples += 1;
        if samples > limits.max_samples {
            return Err(ParseError::TooManySamples(limits.max_samples));
        }
        if !seen.insert((name.clone(), sample.labels.clone())) {
            return Err(ParseError::Duplicate {
                labels: format!("{:?}", sample.labels),
                name,
            });
        }
        place(name, sample, &mut families, &mut by_name);
    }
    Ok(families)
}

/// `# HELP name text` and `# TYPE name type` declare a family; other comments are ignored.
fn read_comment(comment: &str, families: &mut Vec<Family>, by_name: &mut HashMap<String, usize>) {
    let mut words = comment.trim_start().splitn(3, [' ', '\t']);
    let (Some(keyword), Some(name)) = (words.next(), words.next()) else {
        return;
    };
    let rest = words.next().unwrap_or("").trim();
    if !matches!(keyword, "HELP" | "TYPE") {
        return;
    }
    let index = match by_name.get(name) {
        Some(&index) => index,
        None => {
            index_family(by_name, name, families.len());
            families.push(Family {
                name: name.to_string(),
                kind: FamilyType::Untyped,
                help: String::new(),
                samples: Vec::new(),
            });
            families.len() - 1
        }
    };
    let family = &mut families[index];
    if keyword == "HELP" {
        family.help = rest.replace("\\n", "\n").replace("\\\\", "\\");
    } else {
        family.kind = FamilyType::parse(rest);
    }
}

/// The key prefix under which a family with a `:` is also indexed by its escaped name (`:` never begins a name,
/// so these keys cannot clash with a real one).
const ESCAPED: &str = ":escaped:";

/// Every suffix a sample name may add to its family's name.
const SUFFIXES: [&str; 7] = ["_total", "_created", "_bucket", "_sum", "_count", "_gsum", "_gcount"];

/// Puts a sample into the family its name belongs to: the declared family it extends with a suffix of that
/// family's type, else a family of its own (untyped). Each lookup is a few hash probes, so a page of a hundred
/// thousand distinct names costs no more than its length.
fn place(name: String, mut sample: Sample, families: &mut Vec<Family>, by_name: &mut HashMap<String, usize>) {
    let fits = |index: usize, suffix: &str| families[index].kind.suffixes().contains(&suffix);
    let mut found = by_name.get(&name).copied().filter(|&i| fits(i, "")).map(|i| (i, ""));
    for suffix in SUFFIXES {
        if found.is_some() {
            break;
        }
        if let Some(base) = name.strip_suffix(suffix) {
            found = by_name
                .get(base)
                .copied()
                .filter(|&i| fits(i, suffix))
                .map(|i| (i, suffix));
        }
    }
    // prometheus_client 0.23 to 0.26 writes OpenMetrics samples with `:` escaped to `_` under a `# TYPE` that
    // keeps the `:` (client_python#1177): SGLang's `sglang:x` family has samples `sglang_x_total`. A sample that
    // matches no family as written is matched against the escaped names of the families that have a `:`.
    if found.is_none() && !name.contains(':') {
        for suffix in std::iter::once("").chain(SUFFIXES) {
            let Some(base) = name.strip_suffix(suffix) else {
                continue;
            };
            let escaped = by_name.get(&format!("{ESCAPED}{base}")).copied();
            if let Some(i) = escaped.filter(|&i| suffix.is_empty() || fits(i, suffix)) {
                found = Some((i, suffix));
                break;
            }
        }
    }
    if let Some((index, suffix)) = found {
        sample.suffix = suffix.to_string();
        families[index].samples.push(sample);
        return;
    }
    index_family(by_name, &name, families.len());
    families.push(Family {
        name,
        kind: FamilyType::Untyped,
        help: String::new(),
        samples: vec![sample],
    });
}

/// Indexes a new family by its name, and by its escaped name when it has a `:`.
fn index_family(by_name: &mut HashMap<String, usize>, name: &str, index: usize) {
    by_name.insert(name.to_string(), index);
    if name.contains(':') {
        by_name.insert(format!("{ESCAPED}{}", name.replace(':', "_")), index);
    }
}

/// `name{labels} value [timestamp] [# exemplar]`.
fn read_sample(line: &str, openmetrics: bool) -> Result<(String, Sample), String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .ok_or_else(|| "a sample without a value".to_string())?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("`{name}` is not a metric name"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = read_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    // An exemplar (OpenMetrics) follows ` # `; it is not a sample value.
    let rest = rest.split(" # ").next().unwrap_or(rest);
    let mut fields = rest.split_ascii_whitespace();
    let value = fields.next().ok_or_else(|| format!("`{name}` has no value"))?;
    let value = parse_value(value).ok_or_else(|| format!("`{value}` is not a number (the value of `{name}`)"))?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(t) if openmetrics => Some(
            t.parse::<f64>()
                .map(|s| (s * 1000.0) as i64)
                .map_err(|_| format!("`{t}` is not a timestamp"))?,
        ),
        Some(t) => Some(t.parse::<i64>().map_err(|_| format!("`{t}` is not a timestamp"))?),
    };
    if fields.next().is_some() {
        return Err(format!("`{name}` has more than a value and a timestamp"));
    }
    Ok((
        name.to_string(),
        Sample {
            suffix: String::new(),
            labels,
            value,
            timestamp_ms,
        },
    ))
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The label pairs after `{`, and what follows the closing `}`. Values are quoted, with `\\`, `\"` and `\n`.
fn read_labels(mut s: &str) -> Result<(LabelSet, &str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or_else(|| "a label without `=`".to_string())?;
        let key = s[..eq].trim();
        if !valid_name(key) || key.contains(':') {
            return Err(format!("`{key}` is not a label name"));
        }
        s = s[eq + 1..].trim_start();
        let body = s
            .strip_prefix('"')
            .ok_or_else(|| format!("the value of label `{key}` is not quoted"))?;
        let (value, after) = read_quoted(body).ok_or_else(|| format!("the value of label `{key}` is not closed"))?;
        if labels.iter().any(|(k, _)| k == key) {
            return Err(format!("label `{key}` is given twice"));
        }
        labels.push((key.to_string(), value));
        s = after.trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("labels must be separated by `,`".to_string());
        }
    }
}

/// A quoted string's content (after the opening quote) and what follows its closing quote.
fn read_quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// A sample value: a float as Go's `strconv.ParseFloat` takes it, with `NaN`, `+Inf` and `-Inf`.
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => s.parse::<f64>().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_samples: 1000,
        max_line_bytes: 4096,
    };

    #[test]
    fn families_with_their_suffixes_labels_and_escapes() {
        let page = r#"# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="0.3",model_name="meta-llama/Llama-3, \"8B\""} 2.0
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="meta-llama/Llama-3, \"8B\""} 3.0
vllm:e2e_request_latency_seconds_count{model_name="meta-llama/Llama-3, \"8B\""} 3.0
vllm:e2e_request_latency_seconds_sum{model_name="meta-llama/Llama-3, \"8B\""} 4.5
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{finished_reason="stop",model_name="m"} 7.0
# TYPE tgi_request_count counter
tgi_request_count 12
process_start_time_seconds 1.7e9
up_time NaN 1700000000000
"#;
        let families = parse(page, false, LIMITS).unwrap();
        let histogram = &families[0];
        assert_eq!(histogram.kind, FamilyType::Histogram);
        assert_eq!(histogram.samples.len(), 4);
        assert_eq!(histogram.samples[0].suffix, "_bucket");
        assert_eq!(histogram.samples[0].labels[1].1, "meta-llama/Llama-3, \"8B\"");
        assert_eq!(histogram.samples[1].value, 3.0);
        assert_eq!(histogram.samples[3].suffix, "_sum");
        // prometheus_client names the counter family with `_total` in its TYPE line (text 0.0.4).
        assert_eq!(families[1].name, "vllm:request_success_total");
        assert_eq!(families[1].samples[0].suffix, "");
        assert_eq!(families[2].kind, FamilyType::Counter);
        assert_eq!(families[2].samples[0].value, 12.0);
        assert_eq!(families[3].kind, FamilyType::Untyped);
        assert!(families[4].samples[0].value.is_nan());
        assert_eq!(families[4].samples[0].timestamp_ms, Some(1_700_000_000_000));
    }

    #[test]
    fn openmetrics_counters_exemplars_and_eof() {
        let page = "# TYPE requests counter\n# UNIT requests requests\nrequests_total{code=\"200\"} 5 # {trace_id=\"abc\"} 1 1700000000.5\nrequests_created{code=\"200\"} 1700000000.25\n# EOF\ngarbage that is never read\n";
        let families = parse(page, true, LIMITS).unwrap();
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].samples[0].suffix, "_total");
        assert_eq!(families[0].samples[0].value, 5.0);
        assert_eq!(families[0].samples[1].suffix, "_created");
    }

    #[test]
    fn bad_pages_get_specific_errors() {
        let err = |page: &str| parse(page, false, LIMITS).unwrap_err().to_string();
        assert!(err("foo{a=\"1\" 2\n").contains("line 1"), "{}", err("foo{a=\"1\" 2\n"));
        assert!(err("foo twelve\n").contains("`twelve` is not a number"));
        assert!(err("foo{a=1} 2\n").contains("not quoted"));
        assert!(err("1foo 2\n").contains("not a metric name"));
        assert!(err("foo{a=\"1\"} 2\nfoo{a=\"1\"} 3\n").contains("appears twice"));
        assert!(err("foo{a=\"1\",a=\"2\"} 2\n").contains("given twice"));
        let many: String = (0..1001).map(|i| format!("s{i} 1\n")).collect();
        assert_eq!(
            parse(&many, false, LIMITS).unwrap_err(),
            ParseError::TooManySamples(1000)
        );
        let long = format!("foo{{a=\"{}\"}} 1\n", "x".repeat(5000));
        assert_eq!(
            parse(&long, false, LIMITS).unwrap_err(),
            ParseError::LineTooLong(1, 4096)
        );
    }

    /// A page of many distinct names (each its own untyped family) is read in one pass: every sample is placed
    /// by hash lookups, not by a scan of the families so far (which made such a page quadratic).
    #[test]
    fn a_page_of_distinct_names_is_read_in_linear_time() {
        let page: String = (0..100_000)
            .map(|i| format!("series_{i}_total{{a=\"b\"}} {i}\n"))
            .collect();
        let limits = Limits {
            max_samples: 100_000,
            max_line_bytes: 4096,
        };
        let families = parse(&page, true, limits).unwrap();
        assert_eq!(families.len(), 100_000);
    }
}
