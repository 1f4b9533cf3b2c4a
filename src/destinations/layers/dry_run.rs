//! Reads as the destination inside does, deletes and copies nothing: what a retention dry run
//! needs.

use std::sync::{Arc, Mutex};

use crate::{
    destinations::{CopyError, Destination, RemoteFile, Sent},
    transfer::TransferError,
};

pub struct DryRun {
    inner: Arc<dyn Destination>,
    /// What would have been deleted, in order.
    would_delete: Mutex<Vec<String>>,
}

impl DryRun {
    pub fn new(inner: Arc<dyn Destination>) -> Self {
        DryRun {
            inner,
            would_delete: Mutex::new(Vec::new()),
        }
    }

    pub fn would_delete(&self) -> Vec<String> {
        self.would_delete
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[async_trait::async_trait]
impl super::Layer for DryRun {
    fn inner(&self) -> &dyn Destination {
        &*self.inner
    }

    async fn delete(&self, remote: &str) -> Result<(), TransferError> {
        tracing::info!(path = remote, "dry run: would delete");
        self.would_delete
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(remote.to_string());
        Ok(())
    }

    async fn copy_within(
        &self,
        from: &str,
        to: &str,
        sent: &Sent<'_>,
    ) -> Result<RemoteFile, CopyError> {
        tracing::info!(from, to, "dry run: would copy");
        Ok(RemoteFile {
            path: to.to_string(),
            size: sent.size,
            content_hash: None,
        })
    }
}
