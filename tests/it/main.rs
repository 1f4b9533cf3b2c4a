//! One integration-test binary (one link), one module per area.

mod api;
mod cli;
mod common;
mod crash;
mod queue;
mod scheduler;
#[path = "../support/mod.rs"]
mod support;
