//! Dropbox's content hash: SHA-256 of each 4 MiB block, then SHA-256 of the concatenated block
//! digests, hex. The state between whole blocks is just the list of block digests, so it can be
//! checkpointed with the upload offset and resumed after a crash.

use sha2::{Digest, Sha256};

use crate::transfer::{hex as hex_encode, unhex as hex_decode};

pub const BLOCK: usize = 4 * 1024 * 1024;

#[derive(Clone, Default)]
pub struct ContentHasher {
    blocks: Vec<u8>,
    current: Sha256,
    in_block: usize,
}

impl ContentHasher {
    pub fn new() -> Self {
        Self::default()
    }

    /// Continues from checkpointed block digests (hex of the concatenated 32-byte digests).
    pub fn resume(block_digests_hex: &str) -> Option<Self> {
        let blocks = hex_decode(block_digests_hex)?;
        (blocks.len() % 32 == 0).then(|| ContentHasher {
            blocks,
            ..Default::default()
        })
    }

    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = (BLOCK - self.in_block).min(data.len());
            self.current.update(&data[..take]);
            self.in_block += take;
            data = &data[take..];
            if self.in_block == BLOCK {
                let digest = std::mem::take(&mut self.current).finalize();
                self.blocks.extend_from_slice(&digest);
                self.in_block = 0;
            }
        }
    }

    /// Continues with `next`, a hasher fed the bytes that follow. Only possible on a block
    /// boundary; false (and nothing changed) otherwise.
    pub fn append(&mut self, next: ContentHasher) -> bool {
        if self.in_block != 0 {
            return false;
        }
        self.blocks.extend_from_slice(&next.blocks);
        self.current = next.current;
        self.in_block = next.in_block;
        true
    }

    /// The checkpointable state; only meaningful on a block boundary.
    pub fn state(&self) -> Option<String> {
        (self.in_block == 0).then(|| hex_encode(&self.blocks))
    }

    pub fn finalize(mut self) -> String {
        if self.in_block > 0 {
            let digest = std::mem::take(&mut self.current).finalize();
            self.blocks.extend_from_slice(&digest);
        }
        hex_encode(&Sha256::digest(&self.blocks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_input_hashes_the_empty_string() {
        assert_eq!(
            ContentHasher::new().finalize(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn resumed_state_gives_the_same_hash() {
        let data: Vec<u8> = (0..(BLOCK * 2 + 1234)).map(|i| (i % 251) as u8).collect();
        let mut whole = ContentHasher::new();
        whole.update(&data);
        let mut first = ContentHasher::new();
        first.update(&data[..BLOCK]);
        let mut resumed = ContentHasher::resume(&first.state().unwrap()).unwrap();
        resumed.update(&data[BLOCK..]);
        assert_eq!(whole.finalize(), resumed.finalize());
    }

    #[test]
    fn appending_a_separately_hashed_part_equals_hashing_all() {
        let data: Vec<u8> = (0..(BLOCK * 3 + 99)).map(|i| (i % 253) as u8).collect();
        let mut whole = ContentHasher::new();
        whole.update(&data);
        let mut head = ContentHasher::new();
        head.update(&data[..BLOCK * 2]);
        let mut tail = ContentHasher::new();
        tail.update(&data[BLOCK * 2..]);
        assert!(head.append(tail));
        assert_eq!(head.finalize(), whole.finalize());
        let mut odd = ContentHasher::new();
        odd.update(&[1]);
        assert!(!odd.append(ContentHasher::new()));
    }

    #[test]
    fn state_exists_only_on_block_boundaries() {
        let mut h = ContentHasher::new();
        h.update(&[1, 2, 3]);
        assert!(h.state().is_none());
    }
}
