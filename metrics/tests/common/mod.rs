//! Reading `/metrics` text back with a real exposition parser (`prometheus-parse`).

use prometheus_parse::{LineInfo, Sample, Scrape, Value};

/// Parses exposition text, first checking line by line that nothing is silently skipped:
/// the parser ignores lines it does not understand, so each line must be a `# HELP`/`# TYPE`
/// comment or a sample with a numeric value.
pub fn parse_exposition(text: &str) -> Scrape {
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Doc { .. } | LineInfo::Type { .. } | LineInfo::Empty => {}
            LineInfo::Sample { value, .. } => {
                let numeric =
                    value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value);
                assert!(numeric, "non-numeric sample value in line {line:?}");
            }
            LineInfo::Ignored => panic!("not valid exposition format: {line:?}"),
        }
    }
    let lines = text.lines().map(|l| Ok(l.to_string()));
    Scrape::parse(lines).expect("exposition text parses")
}

/// The samples of metric `name` whose labels include every `(key, value)` of `labels`.
pub fn samples<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

/// The single counter/gauge/untyped value of `name` with `labels`.
pub fn scalar(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples(scrape, name, labels);
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    match &found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{name} is not a scalar: {other:?}"),
    }
}
