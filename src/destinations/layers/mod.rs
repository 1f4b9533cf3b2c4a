//! Wrappers around a destination: what every destination may need (a throttle, a dry run,
//! later encryption) is one file here, with no edit to the copy loop or to any destination.
//! A wrapper implements [`Layer`]: it names the destination inside and takes over the steps of
//! moving and reading bytes that it changes (pace, list, stat, read back, delete, and the
//! upload session's begin / position / append / catch-up / finish, and the content check);
//! the rest of [`Destination`] (what it is, its chunk rules, preparing, abandoning and listing
//! unfinished uploads) always goes straight through to the destination inside.

mod dry_run;
mod throttle;

use bytes::Bytes;

pub use dry_run::DryRun;
pub use throttle::Throttle;

use super::{
    Authorization, ChunkRules, CopyError, Destination, DestinationInfo, Partial, RemoteFile, Sent,
    Session,
};
use crate::transfer::{ByteStream, TransferError};

/// A wrapper: every wrapper is a [`Destination`] itself. Each of these steps goes to the
/// destination inside unless the wrapper takes it over, so a new wrapper (encryption, say) is
/// one file that overrides the steps it changes.
#[async_trait::async_trait]
pub trait Layer: Send + Sync {
    fn inner(&self) -> &dyn Destination;

    async fn pace(&self, bytes: u64) {
        self.inner().pace(bytes).await
    }
    async fn list(&self) -> Result<Vec<RemoteFile>, TransferError> {
        self.inner().list().await
    }
    async fn stat(&self, remote: &str) -> Result<Option<RemoteFile>, TransferError> {
        self.inner().stat(remote).await
    }
    async fn open_at(&self, remote: &str, offset: u64) -> Result<ByteStream, TransferError> {
        self.inner().open_at(remote, offset).await
    }
    async fn delete(&self, remote: &str) -> Result<(), TransferError> {
        self.inner().delete(remote).await
    }
    async fn begin(&self, remote: &str, size: u64, chunk: u64) -> Result<Session, TransferError> {
        self.inner().begin(remote, size, chunk).await
    }
    async fn position(&self, session: &mut Session, ours: u64) -> Result<u64, TransferError> {
        self.inner().position(session, ours).await
    }
    async fn append(
        &self,
        session: &mut Session,
        offset: u64,
        chunk: Bytes,
    ) -> Result<(), TransferError> {
        self.inner().append(session, offset, chunk).await
    }
    fn caught_up(
        &self,
        session: &mut Session,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), TransferError> {
        self.inner().caught_up(session, offset, bytes)
    }
    async fn finish(
        &self,
        session: &mut Session,
        offset: u64,
        chunk: Bytes,
        remote: &str,
        sent: &Sent<'_>,
    ) -> Result<RemoteFile, TransferError> {
        self.inner()
            .finish(session, offset, chunk, remote, sent)
            .await
    }
    async fn same_content(
        &self,
        stored: &RemoteFile,
        source: ByteStream,
        size: u64,
    ) -> Result<bool, TransferError> {
        self.inner().same_content(stored, source, size).await
    }
    async fn copy_within(
        &self,
        from: &str,
        to: &str,
        sent: &Sent<'_>,
    ) -> Result<RemoteFile, CopyError> {
        self.inner().copy_within(from, to, sent).await
    }
}

#[async_trait::async_trait]
impl<L: Layer> Destination for L {
    fn info(&self) -> DestinationInfo {
        self.inner().info()
    }
    fn chunk_rules(&self) -> ChunkRules {
        self.inner().chunk_rules()
    }
    fn root(&self) -> &str {
        self.inner().root()
    }
    fn authorization(&self) -> Option<&dyn Authorization> {
        self.inner().authorization()
    }
    async fn prepare(&self) -> Result<(), TransferError> {
        self.inner().prepare().await
    }
    async fn pace(&self, bytes: u64) {
        Layer::pace(self, bytes).await
    }
    async fn list(&self) -> Result<Vec<RemoteFile>, TransferError> {
        Layer::list(self).await
    }
    async fn stat(&self, remote: &str) -> Result<Option<RemoteFile>, TransferError> {
        Layer::stat(self, remote).await
    }
    async fn open_at(&self, remote: &str, offset: u64) -> Result<ByteStream, TransferError> {
        Layer::open_at(self, remote, offset).await
    }
    async fn delete(&self, remote: &str) -> Result<(), TransferError> {
        Layer::delete(self, remote).await
    }
    async fn begin(&self, remote: &str, size: u64, chunk: u64) -> Result<Session, TransferError> {
        Layer::begin(self, remote, size, chunk).await
    }
    async fn position(&self, session: &mut Session, ours: u64) -> Result<u64, TransferError> {
        Layer::position(self, session, ours).await
    }
    async fn append(
        &self,
        session: &mut Session,
        offset: u64,
        chunk: Bytes,
    ) -> Result<(), TransferError> {
        Layer::append(self, session, offset, chunk).await
    }
    fn caught_up(
        &self,
        session: &mut Session,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), TransferError> {
        Layer::caught_up(self, session, offset, bytes)
    }
    async fn finish(
        &self,
        session: &mut Session,
        offset: u64,
        chunk: Bytes,
        remote: &str,
        sent: &Sent<'_>,
    ) -> Result<RemoteFile, TransferError> {
        Layer::finish(self, session, offset, chunk, remote, sent).await
    }
    async fn abandon(&self, session: &Session) -> Result<(), TransferError> {
        self.inner().abandon(session).await
    }
    async fn partials(&self) -> Result<Vec<Partial>, TransferError> {
        self.inner().partials().await
    }
    fn upload_id(&self, session: &Session) -> String {
        self.inner().upload_id(session)
    }
    async fn same_content(
        &self,
        stored: &RemoteFile,
        source: ByteStream,
        size: u64,
    ) -> Result<bool, TransferError> {
        Layer::same_content(self, stored, source, size).await
    }
    async fn copy_within(
        &self,
        from: &str,
        to: &str,
        sent: &Sent<'_>,
    ) -> Result<RemoteFile, CopyError> {
        Layer::copy_within(self, from, to, sent).await
    }
    async fn keeps_versions(&self) -> Option<bool> {
        self.inner().keeps_versions().await
    }
}
