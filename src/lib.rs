//! offsite: a durable job-queue worker backed by one SQLite file. See README.md.

pub mod addon;
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod destinations;
pub mod devices;
pub mod homeassistant;
pub mod http;
pub mod jobs;
pub mod logging;
pub mod metrics;
pub mod naming;
pub mod ops;
pub mod queue;
pub mod redact;
pub mod sources;
pub mod transfer;
pub mod web;
