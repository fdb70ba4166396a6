//! The Prometheus side: the server's registry of `metrum_*` metrics fed from engine events
//! ([`registry`]), the bucket layouts it uses ([`buckets`]) and the vLLM-named aliases
//! routers read ([`vllm_aliases`]).

pub mod buckets;
pub mod registry;
pub mod vllm_aliases;

pub use registry::{CONTENT_TYPE, MetricsError, MetricsRegistry};
pub use vllm_aliases::CacheConfigInfo;
