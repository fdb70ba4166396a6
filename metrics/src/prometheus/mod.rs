//! The Prometheus side: the server's registry of `metrum_*` metrics fed from engine events
//! ([`registry`]) and the bucket layouts it uses ([`buckets`]).

pub mod buckets;
pub mod registry;

pub use registry::{CONTENT_TYPE, MetricsError, MetricsRegistry};
