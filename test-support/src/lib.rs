//! What the test suites share. Dev-only: the daemons and the lab never depend on this crate.

pub mod closed_within;
pub mod fake_worker;
pub mod http_get;
pub mod mlx_fixtures;
