//! SHA-256 of the plain bytes a transfer read from its source, resumable: the state in progress
//! is serialized into the checkpoint, so a transfer that resumes after `kill -9` still ends with
//! the hash of every byte, not of the bytes since the restart.

use serde::{Deserialize, Serialize};
use sha2_resumable::{
    Digest, Sha256,
    digest::common::hazmat::{SerializableState, SerializedState},
};
use tokio::io::AsyncReadExt;

use super::{ByteStream, TransferError};

/// A SHA-256 in progress.
#[derive(Clone, Default)]
pub struct Sha256State(Sha256);

impl Sha256State {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// Hex digest of everything so far.
    pub fn hex(&self) -> String {
        hex(&self.0.clone().finalize())
    }
}

impl std::fmt::Debug for Sha256State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sha256State")
    }
}

impl PartialEq for Sha256State {
    fn eq(&self, other: &Self) -> bool {
        self.0.serialize() == other.0.serialize()
    }
}

impl Serialize for Sha256State {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex(&self.0.serialize()))
    }
}

impl<'de> Deserialize<'de> for Sha256State {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = unhex(&text).ok_or_else(|| serde::de::Error::custom("not hex"))?;
        let state = SerializedState::<Sha256>::try_from(bytes.as_slice())
            .map_err(|_| serde::de::Error::custom("not a SHA-256 state"))?;
        Sha256::deserialize(&state)
            .map(Sha256State)
            .map_err(|_| serde::de::Error::custom("not a SHA-256 state"))
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
}
