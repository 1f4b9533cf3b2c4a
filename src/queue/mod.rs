//! The durable job queue: store (all SQL), states, retry timing, worker pools, scheduler and
//! background upkeep.

pub mod context;
pub mod executor;
pub mod maintenance;
pub mod registry;
pub mod retry;
pub mod scheduler;
pub mod state;
pub mod store;

pub use context::{JobContext, Progress};
pub use registry::{EnqueueRequest, FieldError, JobArgs, JobError, KindSettings, Registry, Worker};
pub use state::JobState;
pub use store::Store;
