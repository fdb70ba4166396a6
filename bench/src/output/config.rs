//! `config.json`: every knob of the run, the target (URL, model, context, `/version`), the
//! workload as actually sent (lengths, a digest of the `max_tokens` sequence), and the
//! machine. `metrum bench compare` reads it to warn when runs are not comparable (R1-R4).

use super::summary::SloParams;
use crate::machine::MachineInfo;
use crate::run::Plan;
use crate::session::Session;
use metrum_metrics::{Distribution, DistributionSummary, Population};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetInfo {
    pub base_url: String,
    pub model: String,
    pub model_source: String,
    pub context: u32,
    pub context_source: String,
    /// Started by this run with `--serve`.
    pub started_server: bool,
    pub version: Option<Value>,
    pub tokenizer: String,
    pub temperature: f64,
    pub logit_bias: Option<std::collections::BTreeMap<String, f64>>,
    pub request_timeout_s: f64,
    /// Set when responses named the replica a router sent them to; absent in older files.
    #[serde(default)]
    pub router: Option<RouterInfo>,
}

/// The run went through a router: which header said so, and how many requests each replica
/// answered (requests without the header are counted under `""`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouterInfo {
    pub header: String,
    pub requests_per_replica: std::collections::BTreeMap<String, usize>,
}

impl RouterInfo {
    /// `None` unless at least one response carried the router's header.
    pub fn from_routes<'a>(routes: impl Iterator<Item = Option<&'a str>>) -> Option<RouterInfo> {
        let mut per_replica = std::collections::BTreeMap::new();
        let mut routed = false;
        for route in routes {
            routed |= route.is_some();
            *per_replica
                .entry(route.unwrap_or_default().to_string())
                .or_insert(0) += 1;
        }
        routed.then(|| RouterInfo {
            header: crate::client::ROUTED_WORKER_HEADER.to_string(),
            requests_per_replica: per_replica,
        })
    }

    /// Replicas that answered at least one request.
    pub fn replicas(&self) -> usize {
        self.requests_per_replica
            .keys()
            .filter(|k| !k.is_empty())
            .count()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadInfo {
    pub spec: String,
    pub arrival: String,
    pub qps: f64,
    pub seed: u64,
    /// Mixed into the prompts' seed (capacity probes); absent in older files.
    #[serde(default)]
    pub prompt_salt: u64,
    pub requests: usize,
    pub warmup_s: f64,
    pub length_scale: f64,
    pub shrunk_by_context: usize,
    pub inexact_prompts: usize,
    pub prompt_tokens: DistributionSummary,
    pub max_tokens: DistributionSummary,
    pub max_tokens_total: u64,
    /// FNV-1a of the `max_tokens` sequence: equal digests, equal work asked for.
    pub max_tokens_digest: String,
    /// Completed requests that returned fewer than `max_tokens` tokens (R3).
    pub short_outputs: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub command: String,
    /// The command-line arguments, as parsed.
    pub args: Value,
    pub target: TargetInfo,
    pub workload: WorkloadInfo,
    pub slo: SloParams,
    pub machine: MachineInfo,
    pub metrum_bench_version: String,
}

fn source(s: crate::session::Source) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// FNV-1a 64 over the little-endian bytes of each value.
pub fn digest(values: impl Iterator<Item = u32>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_le_bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// Everything but the results, which only add `short_outputs`.
pub struct ConfigInputs<'a> {
    pub command: &'a str,
    pub args: Value,
    pub session: &'a Session,
    pub plan: &'a Plan,
    pub qps: f64,
    pub seed: u64,
    pub warmup_s: f64,
    pub length_scale: f64,
    pub slo: SloParams,
    pub machine: MachineInfo,
    pub short_outputs: usize,
    pub router: Option<RouterInfo>,
}

pub fn build(i: ConfigInputs<'_>) -> RunConfig {
    let s = i.session;
    let requests = &i.plan.requests;
    let lengths = |f: fn(&crate::run::PlannedRequest) -> u32| {
        Distribution::new(
            Population::Requests,
            requests.iter().map(|r| f64::from(f(r))),
        )
        .summary()
    };
    RunConfig {
        command: i.command.to_string(),
        args: i.args,
        target: TargetInfo {
            base_url: s.base_url.clone(),
            model: s.model.clone(),
            model_source: source(s.model_source),
            context: s.context,
            context_source: source(s.context_source),
            started_server: s.started_server(),
            version: s.version.clone(),
            tokenizer: s.tokenizer.describe(),
            temperature: s.temperature,
            logit_bias: s.logit_bias.clone(),
            request_timeout_s: s.request_timeout.as_secs_f64(),
            router: i.router,
        },
        workload: WorkloadInfo {
            spec: i.plan.workload.to_string(),
            arrival: i.plan.arrival.to_string(),
            qps: i.qps,
            seed: i.seed,
            prompt_salt: i.plan.prompt_salt,
            requests: requests.len(),
            warmup_s: i.warmup_s,
            length_scale: i.length_scale,
            shrunk_by_context: i.plan.shrunk_by_context,
            inexact_prompts: i.plan.inexact_prompts,
            prompt_tokens: lengths(|r| r.prompt_tokens),
            max_tokens: lengths(|r| r.max_tokens),
            max_tokens_total: requests.iter().map(|r| u64::from(r.max_tokens)).sum(),
            max_tokens_digest: digest(requests.iter().map(|r| r.max_tokens)),
            short_outputs: i.short_outputs,
        },
        slo: i.slo,
        machine: i.machine,
        metrum_bench_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::RouterInfo;

    #[test]
    fn a_router_is_seen_only_when_a_response_names_a_replica() {
        assert_eq!(RouterInfo::from_routes([None, None].into_iter()), None);
        let routes = [
            Some("http://a:1"),
            None,
            Some("http://b:2"),
            Some("http://a:1"),
        ];
        let router = RouterInfo::from_routes(routes.into_iter()).unwrap();
        assert_eq!(router.replicas(), 2);
        assert_eq!(router.requests_per_replica["http://a:1"], 2);
        assert_eq!(router.requests_per_replica["http://b:2"], 1);
        assert_eq!(
            router.requests_per_replica[""], 1,
            "unnamed requests are still counted"
        );
    }
}
