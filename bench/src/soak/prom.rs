//! Reading samples out of Prometheus text (what `GET /metrics` returns): enough of the
//! exposition format for counters and gauges, `name{label="value",...} number`.

use std::collections::BTreeMap;

/// One scrape: every sample by name, with its labels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// Parses the text; lines that are comments or do not parse are skipped.
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_line)
            .collect();
        Scrape { samples }
    }

    /// The value of `name` whose labels include every pair of `labels`; summed when several
    /// series match (so `value("x", &[])` is the total over all label values).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matching = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|have| have == v))
            })
            .map(|(_, _, v)| *v)
            .peekable();
        matching.peek()?;
        Some(matching.sum())
    }

    /// Like [`Scrape::value`], 0 when absent (a counter never incremented may be unexported).
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }
}

fn parse_line(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series.trim(), BTreeMap::new()),
        Some((name, rest)) => (name.trim(), parse_labels(rest.strip_suffix('}')?)?),
    };
    Some((name.to_string(), labels, value))
}

/// `a="x",b="y\"z"`: values may hold escaped quotes, commas and braces.
fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text.trim_start_matches(',');
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim().to_string(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP metrum_requests_total Finished requests, by finish reason.
# TYPE metrum_requests_total counter
metrum_requests_total{finish_reason="abort"} 3
metrum_requests_total{finish_reason="length"} 40
metrum_requests_total{finish_reason="stop"} 2
metrum_kv_cache_usage_ratio 0
metrum_slo_info{tbt_slo_seconds="0.03",note="a \"q\", {b}"} 1
"#;

    #[test]
    fn reads_counters_gauges_and_labelled_series() {
        let s = Scrape::parse(TEXT);
        assert_eq!(
            s.value("metrum_requests_total", &[("finish_reason", "abort")]),
            Some(3.0)
        );
        assert_eq!(s.value("metrum_requests_total", &[]), Some(45.0));
        assert_eq!(s.value("metrum_kv_cache_usage_ratio", &[]), Some(0.0));
        assert_eq!(
            s.value("metrum_slo_info", &[("note", "a \"q\", {b}")]),
            Some(1.0)
        );
        assert_eq!(s.value("metrum_absent", &[]), None);
        assert_eq!(s.count("metrum_absent", &[]), 0.0);
        assert_eq!(
            s.value("metrum_requests_total", &[("finish_reason", "error")]),
            None
        );
    }
}
