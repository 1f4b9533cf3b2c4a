//! One integration-test binary (one link), one module per area.

mod addon;
mod api;
mod browser;
mod cli;
mod common;
mod conformance;
mod crash;
mod db_dump;
mod devices;
mod devices_more;
mod dropbox;
mod google;
mod google_fake;
mod layers;
mod panel;
mod proxy;
mod queue;
mod s3;
mod scheduler;
mod sharepoint;
mod snapshots;
mod sources_tests;
#[path = "../support/mod.rs"]
mod support;
mod trust;
