//! Free space on the cache's filesystem, checked before a download starts
//! so that a blob that cannot fit is refused at once, with a message that
//! says how much is missing, instead of filling the disk to 100% (where
//! `state.json` can no longer be written either) and failing half-way.

use std::io;
use std::path::Path;

/// Room kept free beyond the blob itself: for `state.json`, the logs and
/// the filesystem's own bookkeeping, so that a cache that just fits does not
/// leave the rest of the agent without a byte to write.
pub(crate) const MARGIN_BYTES: u64 = 64 << 20;

/// Bytes an unprivileged process may still write on the filesystem
/// holding `path` (`statvfs`: available blocks times fragment size).
pub(crate) fn available_bytes(path: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(path).map_err(io::Error::from)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Whether an error means the disk (or the user's quota) is full.
pub(crate) fn is_out_of_space(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}
