//! One integration-test binary (one link), one module per area.

mod common;
mod queue;
mod scheduler;
