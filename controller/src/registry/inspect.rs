//! Reads an artifact while it streams: computes its blake3 digest and parses
//! its GGUF header, on one blocking thread, in a single pass over the bytes.
//!
//! The upload handler sends each chunk it receives into a bounded channel; the
//! inspector hashes every chunk whole and lets the GGUF parser pull bytes from
//! the same chunks until the header (metadata and tensor table) is read, then
//! keeps hashing to the end. Memory stays bounded by the channel, whatever
//! the file's size: the bytes are never gathered in one buffer.
//!
//! Once the header is read, a second thread asks the engine whether it can
//! serve the file (`Engine::check`, from the header alone) while the rest is
//! hashed, so the verdict costs the upload no time of its own.

use std::io::Read;

use bytes::{Buf, Bytes};
use flotilla_gguf::{GgufError, GgufHeader};
use tokio::sync::mpsc;

use crate::domain::Digest;

/// Chunks buffered between the upload and the inspector thread.
pub const INSPECT_CHANNEL_CHUNKS: usize = 16;

/// What the inspector learnt about a complete upload.
pub struct Inspection {
    pub digest: Digest,
    pub size_bytes: u64,
    pub header: Result<GgufHeader, GgufError>,
    /// The engine's verdict on the header (`None` when there is no header).
    pub engine_verdict: Option<Result<(), String>>,
}

/// Starts the inspector on a blocking thread; feed it through the returned
/// sender and await the handle once the sender is dropped.
pub fn spawn_inspector() -> (mpsc::Sender<Bytes>, tokio::task::JoinHandle<Inspection>) {
    let (sender, receiver) = mpsc::channel(INSPECT_CHANNEL_CHUNKS);
    let handle = tokio::task::spawn_blocking(move || inspect(receiver));
    (sender, handle)
}

fn inspect(receiver: mpsc::Receiver<Bytes>) -> Inspection {
    let mut reader = HashingChannelReader {
        receiver,
        current: Bytes::new(),
        hasher: blake3::Hasher::new(),
        size_bytes: 0,
    };
    let header = flotilla_gguf::read_header(&mut reader);
    let engine_verdict = std::thread::scope(|scope| {
        let check = header
            .as_ref()
            .ok()
            .map(|header| scope.spawn(|| check_with_engine(header.clone())));
        // Hash whatever the parser did not need (the tensor data).
        while reader.next_chunk() {}
        check.map(|check| {
            check.join().unwrap_or_else(|_| {
                Err("the engine failed while checking it (a bug: please report it)".into())
            })
        })
    });
    Inspection {
        digest: Digest::from(reader.hasher.finalize()),
        size_bytes: reader.size_bytes,
        header,
        engine_verdict,
    }
}

/// What `Engine::load` would say of this file on every node, in its words.
fn check_with_engine(header: GgufHeader) -> Result<(), String> {
    flotilla_engine::Engine::check(header).map_err(|error| error.to_string())
}

/// A `Read` over chunks arriving on a channel; every chunk is hashed as a
/// whole when it arrives, however much of it the parser reads.
struct HashingChannelReader {
    receiver: mpsc::Receiver<Bytes>,
    current: Bytes,
    hasher: blake3::Hasher,
    size_bytes: u64,
}

impl HashingChannelReader {
    /// Takes the next chunk into `current`; false at the end of the stream.
    fn next_chunk(&mut self) -> bool {
        match self.receiver.blocking_recv() {
            Some(chunk) => {
                // Large chunks hash faster with blake3's SIMD over many blocks.
                self.hasher.update(&chunk);
                self.size_bytes += chunk.len() as u64;
                self.current = chunk;
                true
            }
            None => false,
        }
    }
}

impl Read for HashingChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if !self.next_chunk() {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use flotilla_gguf::{GgmlType, GgufBuilder};

    use super::*;

    async fn inspect_in_chunks(bytes: &[u8], chunk: usize) -> Inspection {
        let (sender, handle) = spawn_inspector();
        for piece in bytes.chunks(chunk) {
            sender
                .send(Bytes::copy_from_slice(piece))
                .await
                .expect("inspector alive");
        }
        drop(sender);
        handle.await.expect("inspector finished")
    }

    #[tokio::test]
    async fn digest_and_header_come_from_one_pass() {
        let file = GgufBuilder::new()
            .metadata_str("general.architecture", "llama")
            .tensor("w", &[32, 4], GgmlType::F32, &[0u8; 32 * 4 * 4])
            .build();
        for chunk in [1, 7, 4096, file.len()] {
            let inspection = inspect_in_chunks(&file, chunk).await;
            assert_eq!(inspection.digest, Digest::from(blake3::hash(&file)));
            assert_eq!(inspection.size_bytes, file.len() as u64);
            let header = inspection.header.expect("valid gguf");
            assert_eq!(header.architecture(), Some("llama"));
            assert_eq!(header.parameter_count(), 128);
        }
    }

    #[tokio::test]
    async fn garbage_still_gets_a_digest() {
        let garbage = vec![0xAB; 10_000];
        let inspection = inspect_in_chunks(&garbage, 999).await;
        assert_eq!(inspection.digest, Digest::from(blake3::hash(&garbage)));
        assert!(inspection.header.is_err());
    }
}
