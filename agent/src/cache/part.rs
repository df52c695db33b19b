//! Blocking file work for one download: the `.part` file being filled, its
//! running blake3 state, and the step that turns it into a verified blob.
//!
//! Everything here runs inside `spawn_blocking`. A [`PartFile`] carries a clone
//! of the per-digest lock guard, so when a download future is dropped while a
//! write is still running on the blocking pool, the digest stays locked until
//! that write has finished: a second `ensure` never reads a `.part` file that
//! another writer is still appending to.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::OwnedMutexGuard;

use super::Digest;

/// Holds a digest's download lock; shared between the async download and the
/// blocking file work it hands off.
pub(crate) type DigestLock = Arc<OwnedMutexGuard<()>>;

const READ_BUFFER_BYTES: usize = 1 << 20;

/// An open `.part` file whose first `len` bytes have been fed to `hasher`.
pub(crate) struct PartFile {
    pub(crate) path: PathBuf,
    file: File,
    /// Boxed: blake3's state is about 2 KB and a `PartFile` is moved
    /// between the async task and the blocking pool on every write.
    hasher: Box<blake3::Hasher>,
    pub(crate) len: u64,
    _lock: DigestLock,
}

impl PartFile {
    /// Opens (or creates) the `.part` file and re-hashes what it already
    /// holds, so that the download can continue from its end.
    pub(crate) fn open(path: PathBuf, lock: DigestLock) -> io::Result<PartFile> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?;
        let (hasher, len) = hash_reader(&mut file)?;
        // Writes continue exactly where the hashed prefix ends.
        file.seek(SeekFrom::Start(len))?;
        Ok(PartFile {
            path,
            file,
            hasher: Box::new(hasher),
            len,
            _lock: lock,
        })
    }

    /// Appends `bytes` and feeds them to the hasher.
    pub(crate) fn append(mut self, bytes: &[u8]) -> io::Result<PartFile> {
        self.file.write_all(bytes)?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(self)
    }

    /// Empties the file: the server sent the whole blob instead of the range
    /// asked for, so the prefix is written again from the start.
    pub(crate) fn restart(mut self) -> io::Result<PartFile> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.hasher.reset();
        self.len = 0;
        Ok(self)
    }

    /// Compares the full digest and the size. On a match the file is synced
    /// and handed back as a [`VerifiedPart`]; on a mismatch it is deleted, so
    /// that no later attempt resumes from bytes known to be wrong.
    pub(crate) fn verify(
        self,
        digest: &Digest,
        size_bytes: u64,
    ) -> io::Result<Result<VerifiedPart, String>> {
        let actual = Digest::from(self.hasher.finalize());
        let problem = if self.len != size_bytes {
            Some(format!(
                "blob {} is {} bytes, expected {size_bytes}",
                digest.short(),
                self.len
            ))
        } else if actual != *digest {
            Some(format!(
                "blob {} hashed to {}",
                digest.short(),
                actual.short()
            ))
        } else {
            None
        };
        match problem {
            Some(problem) => {
                drop(self.file);
                remove_if_present(&self.path)?;
                Ok(Err(problem))
            }
            None => {
                self.file.sync_all()?;
                Ok(Ok(VerifiedPart {
                    path: self.path,
                    _lock: self._lock,
                }))
            }
        }
    }

    /// Closes and deletes the file.
    pub(crate) fn discard(self) -> io::Result<()> {
        drop(self.file);
        remove_if_present(&self.path)
    }
}

/// A `.part` file whose digest and size matched. Only [`PartFile::verify`]
/// makes one, and [`VerifiedPart::promote`] is the only way a file enters
/// `blobs/`: the architecture invariant "a blob is renamed into the cache only
/// after its digest matched" is held by the type system.
pub(crate) struct VerifiedPart {
    path: PathBuf,
    _lock: DigestLock,
}

impl VerifiedPart {
    /// Renames the file into place and syncs the directory, so that after a
    /// crash the blob is either fully there or not there at all.
    pub(crate) fn promote(self, blob_path: &Path) -> io::Result<()> {
        fs::rename(&self.path, blob_path)?;
        if let Some(directory) = blob_path.parent() {
            File::open(directory)?.sync_all()?;
        }
        Ok(())
    }
}

pub(crate) fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Hashes a whole cached blob on all cores: blake3 over a memory map,
/// split across rayon's pool (blake3 falls back to plain reads for files too
/// small to be worth mapping). Blocking: call it from the blocking pool.
pub(crate) fn hash_file_parallel(path: &Path) -> io::Result<Digest> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(path)?;
    Ok(Digest::from(hasher.finalize()))
}

/// Hashes everything `reader` yields, returning the state and the byte count.
fn hash_reader(reader: &mut impl Read) -> io::Result<(blake3::Hasher, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    let mut len = 0u64;
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        hasher.update(&buffer[..read]);
        len += read as u64;
    }
    Ok((hasher, len))
}
