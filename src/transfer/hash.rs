//! SHA-256 (and, where the source publishes one to check, MD5) of the plain bytes a transfer
//! read from its source, resumable: the state in progress is serialized into the checkpoint, so
//! a transfer that resumes after `kill -9` still ends with the hash of every byte, not of the
//! bytes since the restart.

use serde::{Deserialize, Serialize};
use sha2_resumable::{
    Digest, Sha256,
    digest::common::hazmat::{SerializableState, SerializedState},
};
use tokio::io::AsyncReadExt;

use super::{ByteStream, TransferError};

/// A hash in progress whose state serializes (RustCrypto's 0.11 digests), so a checkpoint can
/// carry it across a restart.
#[derive(Clone, Default)]
pub struct Resumable<D>(D);

/// A SHA-256 in progress.
pub type Sha256State = Resumable<Sha256>;
/// An MD5 in progress: Google Drive's `md5Checksum` is checked against it.
pub type Md5State = Resumable<md5_resumable::Md5>;

impl<D: Digest + Clone + Default + SerializableState> Resumable<D> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        Digest::update(&mut self.0, bytes);
    }

    /// Hex digest of everything so far.
    pub fn hex(&self) -> String {
        hex(&self.0.clone().finalize())
    }
}

impl<D> std::fmt::Debug for Resumable<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("hash state")
    }
}

impl<D: SerializableState> PartialEq for Resumable<D> {
    fn eq(&self, other: &Self) -> bool {
        self.0.serialize() == other.0.serialize()
    }
}

impl<D: SerializableState> Serialize for Resumable<D> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex(&self.0.serialize()))
    }
}

impl<'de, D: SerializableState> Deserialize<'de> for Resumable<D> {
    fn deserialize<De: serde::Deserializer<'de>>(d: De) -> Result<Self, De::Error> {
        let text = String::deserialize(d)?;
        let bytes = unhex(&text).ok_or_else(|| serde::de::Error::custom("not hex"))?;
        let state = SerializedState::<D>::try_from(bytes.as_slice())
            .map_err(|_| serde::de::Error::custom("not a hash state"))?;
        D::deserialize(&state)
            .map(Resumable)
            .map_err(|_| serde::de::Error::custom("not a hash state"))
    }
}

/// Lower-case hex of `bytes`: the one encoder every hash, token and nonce goes through.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The bytes of lower- or upper-case hex; None for anything else.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Length and hex SHA-256 of a whole stream, hashed off the async threads.
pub async fn sha256_of(mut stream: ByteStream) -> Result<(u64, String), TransferError> {
    let mut state = Sha256State::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| TransferError::Temporary(format!("reading failed: {e}")))?;
        if n == 0 {
            return Ok((len, state.hex()));
        }
        len += n as u64;
        let (s, b) = tokio::task::spawn_blocking(move || {
            state.update(&buf[..n]);
            (state, buf)
        })
        .await
        .map_err(|e| TransferError::Temporary(format!("hashing failed: {e}")))?;
        state = s;
        buf = b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serialized_state_continues_to_the_same_digest() {
        let data: Vec<u8> = (0..200_003u32).map(|i| (i * 7 % 251) as u8).collect();
        for cut in [0, 1, 63, 64, 65, 100_000, data.len()] {
            let mut a = Sha256State::new();
            a.update(&data[..cut]);
            let saved = serde_json::to_string(&a).unwrap();
            let mut b: Sha256State = serde_json::from_str(&saved).unwrap();
            assert_eq!(a, b);
            b.update(&data[cut..]);
            assert_eq!(b.hex(), sha256_hex(&data), "cut at {cut}");
        }
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(serde_json::from_str::<Sha256State>("\"00\"").is_err());
    }

    #[test]
    fn an_md5_continues_across_a_restart_too() {
        let data: Vec<u8> = (0..70_001u32).map(|i| (i * 13 % 251) as u8).collect();
        let mut whole = Md5State::new();
        whole.update(&data);
        let mut a = Md5State::new();
        a.update(&data[..40_000]);
        let mut b: Md5State = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        b.update(&data[40_000..]);
        assert_eq!(b.hex(), whole.hex());
        let mut abc = Md5State::new();
        abc.update(b"abc");
        assert_eq!(abc.hex(), "900150983cd24fb0d6963f7d28e17f72");
    }
}
