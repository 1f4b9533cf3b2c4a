//! What OAuth destinations share: the PKCE pair, the operator's steps (a link to follow, a code
//! to trade for tokens, forgetting them) as one capability the API, panel and CLI call without
//! knowing which service is behind it, and the credential store: owner-only files replaced
//! atomically.

use std::{fmt, path::Path};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::transfer::TransferError;

/// A destination the user has to grant access to first.
#[async_trait::async_trait]
pub trait Authorization: Send + Sync {
    /// Credentials present and not known revoked.
    fn is_authorized(&self) -> bool;

    /// The redirect URI registered with the service for the redirect flow, if configured.
    fn redirect_uri(&self) -> Option<&str> {
        None
    }

    /// Where to send the user. Without `redirect_uri` the service shows them a code to paste
    /// back.
    fn authorize_url(&self, pkce: &Pkce, redirect_uri: Option<&str>, state: Option<&str>)
    -> String;

    /// Trades the code the user brought back for tokens and stores them durably; `Ok` means
    /// they are on disk.
    async fn exchange_code(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: Option<&str>,
    ) -> Result<(), TransferError>;

    /// Deletes the stored credentials and drops those in memory.
    async fn forget(&self) -> std::io::Result<()>;
}

/// Where a destination's credentials are kept (owner-only permissions).
pub fn credential_file(data_dir: &Path, kind: &str, destination: &str) -> std::path::PathBuf {
    data_dir
        .join("credentials")
        .join(format!("{kind}-{destination}.json"))
}

/// A PKCE (RFC 7636) verifier and its S256 challenge.
#[derive(Clone)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    /// 48 random bytes give a 64-character base64url verifier (RFC 7636 allows 43..=128 of
    /// exactly these unreserved characters).
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut raw = [0u8; 48];
        rand::rng().fill_bytes(&mut raw);
        Self::from_verifier(URL_SAFE_NO_PAD.encode(raw))
    }

    pub fn from_verifier(verifier: String) -> Self {
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Self {
            verifier,
            challenge,
        }
    }
}

impl fmt::Debug for Pkce {
    // The verifier turns an intercepted code into tokens, so it stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkce")
            .field("verifier", &"***")
            .field("challenge", &self.challenge)
            .finish()
    }
}

/// Replace `path` atomically with owner-only `data`: a crash leaves the old or the new file,
/// never a torn one, and the rename is synced so it survives a power cut.
pub(crate) fn write_private_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the token file path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        #[cfg(unix)]
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
