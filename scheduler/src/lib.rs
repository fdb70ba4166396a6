//! # Layout (placeholder, filled by the scheduler work)
