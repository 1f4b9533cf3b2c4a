//! In-process fakes of the third-party HTTP APIs offsite talks to, for the
//! integration tests only (never production code). Each fake is an axum
//! server on 127.0.0.1:0 that follows the provider's public spec, including
//! its error bodies, and offers knobs for fault injection:
//!
//! - [`dropbox::FakeDropbox`]: Dropbox API v2 (OAuth2 + PKCE, upload
//!   sessions, list_folder, delete_v2), per dropbox/dropbox-api-spec.
//! - [`graph::FakeGraph`]: Microsoft Graph for a SharePoint library (app-only
//!   token endpoint, site/drive/item routes, upload sessions), per Microsoft's docs.
//! - [`s3::Moto`]: a real S3 server (moto_server) with a fault-injecting proxy.
//! - [`supervisor::FakeSupervisor`]: the Home Assistant Supervisor API as an
//!   add-on sees it (backups, Core API proxy), per home-assistant/supervisor
//!   and home-assistant/core sources.
//!
//! Needs the dev-dependencies `sha2 = "0.10"`, `base64 = "0.22"` and
//! `tempfile = "3"`. Build sha2 optimised in dev
//! (`[profile.dev.package.sha2] opt-level = 3`): hashing 2 GiB unoptimised
//! takes about a minute instead of a second or two.
#![allow(dead_code)]

pub mod devices;
pub mod dropbox;
pub mod fault;
pub mod fritzbox;
pub mod google_drive;
pub mod graph;
pub mod ingress;
pub mod nginx;
pub mod opnsense;
pub mod postgres;
pub mod s3;
pub mod supervisor;
