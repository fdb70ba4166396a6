//! vLLM-named aliases of `metrum_*` metrics, for routers that only read vLLM's names: the
//! Gateway API Inference Extension's endpoint picker (EPP) and SMG (see
//! `shared/guides/scale-out.md` §1.3 and §2.1). Each alias is a copy of its twin's family
//! taken from the same `gather()` snapshot, renamed, so the two can never disagree.
//!
//! `metrum_cache_config_info{block_size,num_gpu_blocks}` (always 1) carries the KV-cache shape
//! the EPP's prefix scorer auto-tunes from; it exists only once the model is loaded.

use ::prometheus::core::Collector;
use ::prometheus::proto::MetricFamily;
use ::prometheus::{GaugeVec, Opts};

/// `(metrum twin, vLLM alias)`. A twin may have several aliases: the EPP before v1.3 read
/// `gpu_cache_usage_perc`, later ones `kv_cache_usage_perc`.
pub const VLLM_ALIASES: &[(&str, &str)] = &[
    ("metrum_requests_waiting", "vllm:num_requests_waiting"),
    ("metrum_requests_running", "vllm:num_requests_running"),
    ("metrum_kv_cache_usage_ratio", "vllm:kv_cache_usage_perc"),
    ("metrum_kv_cache_usage_ratio", "vllm:gpu_cache_usage_perc"),
    ("metrum_cache_config_info", "vllm:cache_config_info"),
    ("metrum_prompt_tokens_total", "vllm:prompt_tokens_total"),
    (
        "metrum_generation_tokens_total",
        "vllm:generation_tokens_total",
    ),
    ("metrum_preemptions_total", "vllm:num_preemptions_total"),
    (
        "metrum_prefix_cache_queries_total",
        "vllm:prefix_cache_queries_total",
    ),
    (
        "metrum_prefix_cache_hits_total",
        "vllm:prefix_cache_hits_total",
    ),
    (
        "metrum_time_to_first_token_seconds",
        "vllm:time_to_first_token_seconds",
    ),
    (
        "metrum_time_per_output_token_seconds",
        "vllm:time_per_output_token_seconds",
    ),
    (
        "metrum_time_between_tokens_seconds",
        "vllm:inter_token_latency_seconds",
    ),
    (
        "metrum_e2e_request_latency_seconds",
        "vllm:e2e_request_latency_seconds",
    ),
    // vLLM's queue time is arrival to first schedule: Metrum's scheduling delay.
    (
        "metrum_scheduling_delay_seconds",
        "vllm:request_queue_time_seconds",
    ),
    (
        "metrum_request_prefill_time_seconds",
        "vllm:request_prefill_time_seconds",
    ),
];

/// The KV cache's shape, for `*cache_config_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfigInfo {
    pub block_size: usize,
    pub num_gpu_blocks: usize,
}

impl CacheConfigInfo {
    /// `metrum_cache_config_info{block_size,num_gpu_blocks} 1`.
    pub fn families(self) -> Result<Vec<MetricFamily>, ::prometheus::Error> {
        let info = GaugeVec::new(
            Opts::new(
                "metrum_cache_config_info",
                "KV-cache shape: tokens per block and blocks in the cache. Always 1.",
            ),
            &["block_size", "num_gpu_blocks"],
        )?;
        info.with_label_values(&[self.block_size.to_string(), self.num_gpu_blocks.to_string()])
            .set(1.0);
        Ok(info.collect())
    }
}

/// Appends a renamed copy of each aliased family found in `families`.
pub fn append_aliases(families: &mut Vec<MetricFamily>) {
    let mut aliases = Vec::new();
    for (twin, alias) in VLLM_ALIASES {
        if let Some(family) = families.iter().find(|f| f.name() == *twin) {
            let mut copy = family.clone();
            copy.set_name((*alias).to_string());
            copy.set_help(format!("vLLM-named alias of {twin}."));
            aliases.push(copy);
        }
    }
    families.extend(aliases);
}
