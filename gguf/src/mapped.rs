//! Memory-mapped GGUF files for the engine: the header is parsed from the mapped bytes and
//! tensor data is handed out as bounds-checked slices, so quantized weights can be used in
//! place without copying them onto the heap.

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::{GgufError, GgufHeader, TensorInfo, read_header};

/// An opened, memory-mapped GGUF file.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    header: GgufHeader,
}

impl GgufFile {
    /// Maps `path` read-only, parses its header and checks the file holds all tensor data.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(GgufError::Io)?;
        // SAFETY: the map is read-only and private to this process. Model files are treated
        // as immutable once placed in the cache (they are renamed in after verification and
        // never rewritten in place); truncating one under a running engine is an operator
        // error that the kernel reports as SIGBUS, as with every mmap-based model loader.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(GgufError::Io)?;
        let header = read_header(&map[..])?;
        let required = header.required_file_size();
        if (map.len() as u64) < required {
            return Err(GgufError::Truncated {
                what: format!(
                    "tensor data of {} ({} bytes, header requires {required})",
                    path.display(),
                    map.len()
                ),
            });
        }
        Ok(GgufFile { path, map, header })
    }

    /// A file made of `header` and all-zero tensor data, for asking what a loader makes of
    /// a header without the file's bytes (the controller checks at upload whether the
    /// engine can serve an artifact while the bytes stream past).
    ///
    /// The data is an anonymous mapping that reserves no memory or swap: a page is only
    /// allocated when it is read, so a loader that reads its small vectors (norms, biases)
    /// and merely slices its matrices costs kilobytes, whatever size the header declares.
    /// `label` stands in for the path in messages.
    pub fn zero_filled(header: GgufHeader, label: &str) -> Result<GgufFile, GgufError> {
        let required = header.required_file_size();
        let length = usize::try_from(required)
            .map_err(|_| GgufError::Invalid(format!("{label} declares {required} bytes")))?;
        let map = memmap2::MmapOptions::new()
            .len(length.max(1))
            .no_reserve_swap()
            .map_anon()
            .and_then(memmap2::MmapMut::make_read_only)
            .map_err(GgufError::Io)?;
        Ok(GgufFile {
            path: PathBuf::from(label),
            map,
            header,
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// The path this file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All bytes of the mapped file.
    pub fn as_bytes(&self) -> &[u8] {
        &self.map
    }

    /// Absolute byte range of one tensor's data in the file, bounds-checked.
    pub fn tensor_range(&self, tensor: &TensorInfo) -> Result<std::ops::Range<usize>, GgufError> {
        let data = self.tensor_data(tensor)?;
        let start = data.as_ptr() as usize - self.map.as_ptr() as usize;
        Ok(start..start + data.len())
    }

    /// Size of the mapped file in bytes.
    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }

    /// The raw bytes of one tensor, bounds-checked against the file.
    pub fn tensor_data(&self, tensor: &TensorInfo) -> Result<&[u8], GgufError> {
        let out_of_bounds = || {
            GgufError::Invalid(format!(
                "tensor {:?} lies outside {} ({} bytes)",
                tensor.name,
                self.path.display(),
                self.map.len()
            ))
        };
        let start = self
            .header
            .data_offset
            .checked_add(tensor.offset)
            .ok_or_else(out_of_bounds)?;
        let end = start
            .checked_add(tensor.checked_byte_size().ok_or_else(out_of_bounds)?)
            .ok_or_else(out_of_bounds)?;
        let start = usize::try_from(start).map_err(|_| out_of_bounds())?;
        let end = usize::try_from(end).map_err(|_| out_of_bounds())?;
        self.map.get(start..end).ok_or_else(out_of_bounds)
    }

    /// Looks a tensor up by name and returns its info and bytes.
    pub fn tensor_by_name(&self, name: &str) -> Option<(&TensorInfo, Result<&[u8], GgufError>)> {
        let tensor = self.header.tensor(name)?;
        Some((tensor, self.tensor_data(tensor)))
    }
}
