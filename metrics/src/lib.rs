//! # Layout (placeholder, filled by the metrics work)
