//! Trace files: rows of (prompt tokens, output tokens, optional arrival time, optional text).
//!
//! CSV needs a header; the columns are `prompt_tokens` (or Etalon's `num_prefill_tokens`),
//! `output_tokens` (or `num_decode_tokens`), and optionally `arrival_time_s` (or `arrival_time`,
//! or the simulator's older `arrival_s`) and `text`.
//! Fields may be double-quoted with `""` escapes; a quoted field cannot span lines (use JSONL
//! for multi-line text). JSONL has one object per line with the same keys.
//!
//! The named traces (`trace:sharegpt`, `trace:arxiv`, `trace:bwb`) are Etalon's processed
//! traces, shipped in the repository's `traces/` and compiled in.

use crate::spec::RequestSpec;
use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use std::path::Path;

/// A trace shipped with Metrum (see `traces/README.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamedTrace {
    /// ShareGPT conversations, ≤ 8k total tokens: chat.
    ShareGpt,
    /// arXiv summarization: long prompts, short outputs (prefill-heavy).
    Arxiv,
    /// BWB: long outputs (translation).
    Bwb,
}

impl NamedTrace {
    pub const ALL: [NamedTrace; 3] = [NamedTrace::ShareGpt, NamedTrace::Arxiv, NamedTrace::Bwb];

    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "sharegpt" | "sharegpt_8k" => Ok(NamedTrace::ShareGpt),
            "arxiv" | "arxiv_summarization" => Ok(NamedTrace::Arxiv),
            "bwb" => Ok(NamedTrace::Bwb),
            other => bail!("unknown trace {other:?}: sharegpt, arxiv or bwb"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            NamedTrace::ShareGpt => "sharegpt",
            NamedTrace::Arxiv => "arxiv",
            NamedTrace::Bwb => "bwb",
        }
    }

    fn csv(self) -> &'static str {
        match self {
            NamedTrace::ShareGpt => include_str!("../../traces/sharegpt_8k.csv"),
            NamedTrace::Arxiv => include_str!("../../traces/arxiv_summarization.csv"),
            NamedTrace::Bwb => include_str!("../../traces/bwb.csv"),
        }
    }

    pub fn rows(self) -> Result<Vec<RequestSpec>> {
        parse_csv(self.csv()).with_context(|| format!("built-in trace {}", self.name()))
    }
}

/// Reads a CSV or JSONL trace (by extension; `.jsonl`/`.ndjson` are JSONL).
pub fn read_file(path: &Path) -> Result<Vec<RequestSpec>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let rows = if matches!(ext, "jsonl" | "ndjson") {
        parse_jsonl(&text)
    } else {
        parse_csv(&text)
    };
    let rows = rows.with_context(|| format!("trace {}", path.display()))?;
    if rows.is_empty() {
        bail!("trace {} has no rows", path.display());
    }
    Ok(rows)
}

#[derive(Deserialize)]
struct JsonRow {
    #[serde(alias = "num_prefill_tokens")]
    prompt_tokens: u32,
    #[serde(alias = "num_decode_tokens")]
    output_tokens: u32,
    #[serde(default, alias = "arrival_time", alias = "arrival_s")]
    arrival_time_s: Option<f64>,
    #[serde(default)]
    text: Option<String>,
}

pub fn parse_jsonl(text: &str) -> Result<Vec<RequestSpec>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let row: JsonRow =
                serde_json::from_str(line).with_context(|| format!("line {}", i + 1))?;
            checked(
                row.prompt_tokens,
                row.output_tokens,
                row.arrival_time_s,
                row.text,
                i + 1,
            )
        })
        .collect()
}

pub fn parse_csv(text: &str) -> Result<Vec<RequestSpec>> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or_else(|| anyhow!("empty CSV"))?;
    let header = split_csv_line(header)?;
    let column = |names: &[&str]| header.iter().position(|h| names.contains(&h.trim()));
    let prompt = column(&["prompt_tokens", "num_prefill_tokens"])
        .ok_or_else(|| anyhow!("no prompt_tokens (or num_prefill_tokens) column"))?;
    let output = column(&["output_tokens", "num_decode_tokens"])
        .ok_or_else(|| anyhow!("no output_tokens (or num_decode_tokens) column"))?;
    let arrival = column(&["arrival_time_s", "arrival_time", "arrival_s"]);
    let text_col = column(&["text"]);
    lines
        .map(|(i, line)| {
            let n = i + 1;
            let fields = split_csv_line(line).with_context(|| format!("line {n}"))?;
            let get = |c: usize| {
                fields
                    .get(c)
                    .map(|f| f.trim())
                    .ok_or_else(|| anyhow!("line {n}: too few fields"))
            };
            let tokens = |c: usize| -> Result<u32> {
                let raw = get(c)?;
                raw.parse::<u32>()
                    .or_else(|_| raw.parse::<f64>().map(|f| f.round() as u32))
                    .map_err(|_| anyhow!("line {n}: {raw:?} is not a token count"))
            };
            let arrival = match arrival {
                Some(c) if !get(c)?.is_empty() => Some(
                    get(c)?
                        .parse::<f64>()
                        .map_err(|_| anyhow!("line {n}: bad arrival time"))?,
                ),
                _ => None,
            };
            let text = text_col.map(|c| fields.get(c).cloned().unwrap_or_default());
            checked(tokens(prompt)?, tokens(output)?, arrival, text, n)
        })
        .collect()
}

fn checked(
    p: u32,
    n: u32,
    arrival_s: Option<f64>,
    text: Option<String>,
    line: usize,
) -> Result<RequestSpec> {
    if p == 0 || n == 0 {
        bail!("line {line}: prompt and output lengths must be at least 1");
    }
    if let Some(a) = arrival_s.filter(|a| !(a.is_finite() && *a >= 0.0)) {
        bail!("line {line}: arrival time {a} must be finite and non-negative");
    }
    Ok(RequestSpec {
        prompt_tokens: p,
        output_tokens: n,
        arrival_s,
        text: text.filter(|t| !t.is_empty()),
    })
}

/// One CSV record on one line: commas separate, `"…"` quotes, `""` is a quote inside quotes.
fn split_csv_line(line: &str) -> Result<Vec<String>> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        let field = fields.last_mut().ok_or_else(|| anyhow!("CSV state"))?;
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => fields.push(String::new()),
            _ => field.push(c),
        }
    }
    if quoted {
        bail!("unterminated quoted field");
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_jsonl_with_optional_columns() {
        let rows = parse_csv(
            "prompt_tokens,output_tokens,arrival_time_s,text\n5,3,0.5,\"a, \"\"b\"\"\"\n7,2,,\n",
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].text.as_deref(), Some("a, \"b\""));
        assert_eq!(rows[0].arrival_s, Some(0.5));
        assert_eq!(
            (
                rows[1].prompt_tokens,
                rows[1].output_tokens,
                rows[1].arrival_s
            ),
            (7, 2, None)
        );
        let rows = parse_jsonl("{\"prompt_tokens\":4,\"output_tokens\":2,\"text\":\"hi\"}\n\n{\"num_prefill_tokens\":1,\"num_decode_tokens\":9}\n").unwrap();
        assert_eq!((rows[1].prompt_tokens, rows[1].output_tokens), (1, 9));
        // The simulator's traces name the arrival column `arrival_s`.
        let rows = parse_csv("num_prefill_tokens,num_decode_tokens,arrival_s\n3,4,1.5\n").unwrap();
        assert_eq!(rows[0].arrival_s, Some(1.5));
        let rows =
            parse_jsonl("{\"prompt_tokens\":4,\"output_tokens\":2,\"arrival_s\":0.25}").unwrap();
        assert_eq!(rows[0].arrival_s, Some(0.25));
        assert!(parse_csv("a,b\n1,2\n").is_err());
        assert!(parse_csv("prompt_tokens,output_tokens\n0,2\n").is_err());
        assert!(parse_jsonl("{\"prompt_tokens\":4}").is_err());
    }

    #[test]
    fn every_shipped_trace_parses() {
        for t in NamedTrace::ALL {
            let rows = t.rows().unwrap();
            assert!(rows.len() > 20_000, "{}", t.name());
            assert_eq!(NamedTrace::parse(t.name()).unwrap(), t);
        }
    }
}
