//! Reading IDX files, the format of the MNIST database, and loading MNIST itself.
//!
//! This module owns the on-disk side of MNIST: gunzipping a `.gz` file, checking its
//! sha256, decoding the IDX header and payload, and checking that the four MNIST files
//! have the sizes and label range the data set is known to have. It produces raw bytes
//! ([`IdxU8`]); turning pixels and labels into tensors belongs to the data-set layer.
//!
//! An IDX file is a 4-byte magic `00 00 <type> <ndims>`, then `ndims` big-endian `u32`
//! dimensions, then the elements in row-major order. Only the element type `0x08`
//! (unsigned byte) is supported, which is all MNIST uses.
//!
//! Invariants:
//! - An [`IdxU8`] returned from this module has at least one dimension and
//!   `data.len()` equal to the product of `dims`: a truncated payload and trailing
//!   bytes are both errors, never silently padded or dropped.
//! - No input, however malformed, panics: every problem is an `Err`, and every error
//!   message starts with the file's name (the path for files read from disk).
//!   Format, gzip and checksum problems are [`Error::Data`]; failures of the operating
//!   system (a missing file, no permission) are [`Error::Io`].
//! - A checksum, when given, is checked on the gzip file's bytes before anything is
//!   decompressed, so a wrong file is reported as such rather than as whatever
//!   decoding error it happens to cause.
//! - Decompression is bounded by the header: a gzip file is decoded as a stream, the
//!   header first, then at most the declared payload plus one byte (to detect trailing
//!   data). A small file that inflates to gigabytes (a "gzip bomb") is an error after
//!   reading one byte past its declared size, and memory never exceeds that size.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The IDX element-type byte for unsigned bytes, the only type supported.
const IDX_TYPE_U8: u8 = 0x08;

/// A decoded IDX file of unsigned bytes: the dims from the header and the raw elements.
///
/// `data` is in row-major order and `data.len()` is always the product of `dims`.
/// `Debug` prints the dims and the element count, not the (possibly 47 MB of) elements.
#[derive(Clone, PartialEq, Eq)]
pub struct IdxU8 {
    /// The dimensions from the header, outermost first (e.g. `[60000, 28, 28]`).
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

impl fmt::Debug for IdxU8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdxU8")
            .field("dims", &self.dims)
            .field("data", &format_args!("<{} bytes>", self.data.len()))
            .finish()
    }
}

/// Decodes IDX bytes (already decompressed). `name` is used in error messages.
///
/// Checks the magic (`00 00 08 ndims`, with `ndims >= 1`; only the unsigned-byte
/// element type `0x08` is supported), that the header holds all `ndims` dimensions,
/// and that the payload length equals the product of the dims exactly: a truncated
/// payload or trailing bytes are errors that give the expected and found byte counts.
///
/// # Example
/// ```
/// use tapeflow::data::idx::decode_idx;
///
/// // Two 1x3 rows of bytes.
/// let bytes = [0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6];
/// let idx = decode_idx(&bytes, "tiny").unwrap();
/// assert_eq!(idx.dims, [2, 3]);
/// assert_eq!(idx.data, [1, 2, 3, 4, 5, 6]);
///
/// let err = decode_idx(&bytes[..17], "tiny").unwrap_err().to_string();
/// assert!(err.contains("tiny") && err.contains("expected 6"), "{err}");
/// ```
pub fn decode_idx(bytes: &[u8], name: &str) -> Result<IdxU8> {
    let (dims, header_len) = parse_header(bytes, name)?;
    Ok(IdxU8 {
        dims,
        data: bytes[header_len..].to_vec(),
    })
}

/// Reads a `.gz` IDX file: gunzips it, checks the sha256 of the *gzip file's bytes*
/// against `expected_sha256` if one is given (hex; compared ignoring case), then
/// decodes it with [`decode_idx`].
///
/// A missing or unreadable file is [`Error::Io`]; a corrupt or truncated gzip stream,
/// a checksum mismatch (the message shows both hashes) or a bad IDX header is
/// [`Error::Data`]. Every message names the path.
///
/// # Example
/// ```
/// use tapeflow::data::idx::{default_mnist_dir, read_idx_gz};
///
/// let path = default_mnist_dir().join("t10k-labels-idx1-ubyte.gz");
/// let labels = read_idx_gz(&path, None).unwrap();
/// assert_eq!(labels.dims, [10000]);
/// assert_eq!(labels.data[0], 7); // the first test digit is a 7
///
/// let err = read_idx_gz(&path, Some("00")).unwrap_err().to_string();
/// assert!(err.contains("t10k-labels-idx1-ubyte.gz") && err.contains("sha256"), "{err}");
/// ```
pub fn read_idx_gz(path: &Path, expected_sha256: Option<&str>) -> Result<IdxU8> {
    let name = path.display().to_string();
    let gz = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if let Some(expected) = expected_sha256 {
        let found = format!("{:x}", Sha256::digest(&gz));
        if !found.eq_ignore_ascii_case(expected) {
            return Err(Error::Data(format!(
                "{name}: sha256 mismatch: expected {expected}, found {found} \
                 (the file is corrupt or not the expected file)"
            )));
        }
    }
    gunzip_idx(&gz, &name)
}

/// The four MNIST files, checked: 60000 training and 10000 test images of 28x28
/// pixels, as many labels as images, checksums as published in `data/mnist/README.md`,
/// and every label below 10.
#[derive(Debug, Clone)]
pub struct MnistRaw {
    /// `train-images-idx3-ubyte.gz`: dims `[60000, 28, 28]`, pixels 0 (background) to 255.
    pub train_images: IdxU8,
    /// `train-labels-idx1-ubyte.gz`: dims `[60000]`, digits 0..=9.
    pub train_labels: IdxU8,
    /// `t10k-images-idx3-ubyte.gz`: dims `[10000, 28, 28]`.
    pub test_images: IdxU8,
    /// `t10k-labels-idx1-ubyte.gz`: dims `[10000]`, digits 0..=9.
    pub test_labels: IdxU8,
}

// The standard MNIST file names with the sha256 of each gzip file, as published in
// `data/mnist/README.md`.
const TRAIN_IMAGES: (&str, &str) = (
    "train-images-idx3-ubyte.gz",
    "0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971",
);
const TRAIN_LABELS: (&str, &str) = (
    "train-labels-idx1-ubyte.gz",
    "1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203",
);
const TEST_IMAGES: (&str, &str) = (
    "t10k-images-idx3-ubyte.gz",
    "1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be",
);
const TEST_LABELS: (&str, &str) = (
    "t10k-labels-idx1-ubyte.gz",
    "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b",
);

/// Loads MNIST from `dir`, which must contain the four standard file names
/// (`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
/// `t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`).
///
/// The files are read in that order; each file's checksum is checked before it is
/// decoded, then its dims and (for labels) its values. The first problem found is
/// returned, naming the file.
///
/// # Example
/// ```no_run
/// use tapeflow::data::idx::{default_mnist_dir, load_mnist_raw};
///
/// let mnist = load_mnist_raw(&default_mnist_dir())?;
/// assert_eq!(mnist.train_images.dims, [60000, 28, 28]);
/// assert_eq!(mnist.test_labels.data.len(), 10000);
/// # Ok::<(), tapeflow::Error>(())
/// ```
pub fn load_mnist_raw(dir: &Path) -> Result<MnistRaw> {
    Ok(MnistRaw {
        train_images: read_mnist_file(dir, TRAIN_IMAGES, &[60000, 28, 28])?,
        train_labels: read_mnist_file(dir, TRAIN_LABELS, &[60000])?,
        test_images: read_mnist_file(dir, TEST_IMAGES, &[10000, 28, 28])?,
        test_labels: read_mnist_file(dir, TEST_LABELS, &[10000])?,
    })
}

/// Reads one MNIST file with its checksum and checks its dims; a one-dimensional file
/// holds labels, which must be digits.
fn read_mnist_file(dir: &Path, (file, sha256): (&str, &str), dims: &[usize]) -> Result<IdxU8> {
    let path = dir.join(file);
    let idx = read_idx_gz(&path, Some(sha256))?;
    let name = path.display().to_string();
    expect_dims(&idx, dims, &name)?;
    if dims.len() == 1 {
        check_labels(&idx, &name)?;
    }
    Ok(idx)
}

/// The repository's MNIST directory: the environment variable `TAPEFLOW_MNIST_DIR`
/// if it is set and not empty, else `data/mnist` under the crate's manifest directory
/// (fixed at compile time).
///
/// # Example
/// ```
/// let dir = tapeflow::data::idx::default_mnist_dir();
/// assert!(dir.join("train-images-idx3-ubyte.gz").exists());
/// ```
pub fn default_mnist_dir() -> PathBuf {
    match std::env::var_os("TAPEFLOW_MNIST_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist")),
    }
}

/// Deflate cannot expand data by more than about 1032:1, so no gzip file of `n` bytes
/// inflates to more than `n * MAX_INFLATE` bytes (a bound on what is worth reserving).
const MAX_INFLATE: usize = 1032;

/// Decodes a gzip file (all members, as `gunzip` does, so trailing garbage after the
/// first member is an error rather than silently ignored) holding an IDX file, as a
/// stream: the header first, then at most the declared payload plus one byte.
fn gunzip_idx(gz: &[u8], name: &str) -> Result<IdxU8> {
    let corrupt = |what: String| Error::Data(format!("{name}: corrupt gzip file: {what}"));
    if gz.len() < 2 || gz[..2] != [0x1f, 0x8b] {
        return Err(corrupt(format!(
            "does not start with the gzip magic 1f 8b ({} bytes)",
            gz.len()
        )));
    }
    let mut stream = flate2::bufread::MultiGzDecoder::new(gz);
    // Reads up to `n` more bytes (fewer only at the end of the stream) onto `buf`.
    let mut read_up_to = |buf: &mut Vec<u8>, n: usize| -> Result<()> {
        (&mut stream)
            .take(n as u64)
            .read_to_end(buf)
            .map(|_| ())
            .map_err(|e| corrupt(e.to_string()))
    };
    let mut header = Vec::with_capacity(4 + 4 * 255);
    read_up_to(&mut header, 4)?;
    if let [0, 0, _, ndims] = header[..] {
        read_up_to(&mut header, 4 * usize::from(ndims))?;
    }
    let (dims, header_len, expected) = parse_dims(&header, name)?;
    // Reserve the declared size, but never more than the file could inflate to.
    let limit = expected.saturating_add(1);
    let mut data = Vec::with_capacity(limit.min(gz.len().saturating_mul(MAX_INFLATE)));
    read_up_to(&mut data, limit)?;
    check_payload(
        &dims,
        header_len,
        expected,
        data.len(),
        data.len() == limit,
        name,
    )?;
    Ok(IdxU8 { dims, data })
}

/// Checks an IDX header and the payload length; returns the dims and the header length.
fn parse_header(bytes: &[u8], name: &str) -> Result<(Vec<usize>, usize)> {
    let (dims, header_len, expected) = parse_dims(bytes, name)?;
    check_payload(
        &dims,
        header_len,
        expected,
        bytes.len() - header_len,
        false,
        name,
    )?;
    Ok((dims, header_len))
}

/// Errs unless the payload has the `expected` length (`more`: the payload was cut off
/// after `found` bytes, and there may be even more).
fn check_payload(
    dims: &[usize],
    header_len: usize,
    expected: usize,
    found: usize,
    more: bool,
    name: &str,
) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    let what = if found < expected {
        "is truncated"
    } else {
        "has trailing bytes"
    };
    let at_least = if more { "at least " } else { "" };
    Err(Error::Data(format!(
        "{name}: IDX payload {what}: dims {dims:?} need {expected} bytes after the \
         {header_len}-byte header (expected {expected} bytes, found {at_least}{found})"
    )))
}

/// Checks an IDX header (magic, type, that all dims are there and their product fits);
/// returns the dims, the header length and the payload length they declare.
fn parse_dims(bytes: &[u8], name: &str) -> Result<(Vec<usize>, usize, usize)> {
    let bad = |msg: String| Error::Data(format!("{name}: {msg}"));
    let [zero0, zero1, ty, ndims] = match bytes {
        [a, b, c, d, ..] => [*a, *b, *c, *d],
        _ => {
            return Err(bad(format!(
                "{} bytes is too short for an IDX file (a 4-byte magic comes first)",
                bytes.len()
            )))
        }
    };
    if zero0 != 0 || zero1 != 0 {
        return Err(bad(format!(
            "not an IDX file: magic bytes {zero0:02x} {zero1:02x} {ty:02x} {ndims:02x}, \
             expected 00 00 08 <ndims>"
        )));
    }
    if ty != IDX_TYPE_U8 {
        return Err(bad(format!(
            "IDX element type 0x{ty:02x} ({}) is not supported; \
             only unsigned bytes (0x08) are",
            idx_type_name(ty)
        )));
    }
    if ndims == 0 {
        return Err(bad("IDX header declares 0 dimensions".to_string()));
    }
    let header_len = 4 + 4 * usize::from(ndims);
    if bytes.len() < header_len {
        return Err(bad(format!(
            "IDX header with {ndims} dimensions needs {header_len} bytes, \
             but the file has only {}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad(format!("IDX dims {dims:?} overflow the address space")))?;
    Ok((dims, header_len, expected))
}

/// The IDX name of an element-type byte, for error messages.
fn idx_type_name(ty: u8) -> &'static str {
    match ty {
        0x08 => "u8",
        0x09 => "i8",
        0x0B => "i16",
        0x0C => "i32",
        0x0D => "f32",
        0x0E => "f64",
        _ => "not an IDX type",
    }
}

/// Errs unless `idx` has exactly the dims `want`.
fn expect_dims(idx: &IdxU8, want: &[usize], name: &str) -> Result<()> {
    if idx.dims != want {
        return Err(Error::Data(format!(
            "{name}: dims {:?}, expected {want:?} for this MNIST file",
            idx.dims
        )));
    }
    Ok(())
}

/// Errs at the first label that is not a digit 0..=9.
fn check_labels(idx: &IdxU8, name: &str) -> Result<()> {
    match idx.data.iter().position(|&l| l >= 10) {
        Some(i) => Err(Error::Data(format!(
            "{name}: label {} at index {i} is not a digit 0..=9",
            idx.data[i]
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    // The shape and label checks of `load_mnist_raw` cannot be reached through the
    // public API with the real checksums in force, so they are tested here directly.
    use super::*;

    #[test]
    fn expect_dims_names_file_and_both_shapes() {
        let idx = IdxU8 {
            dims: vec![9999],
            data: vec![0; 9999],
        };
        assert!(expect_dims(&idx, &[9999], "f.gz").is_ok());
        let err = expect_dims(&idx, &[10000], "f.gz").unwrap_err().to_string();
        assert!(
            err.contains("f.gz") && err.contains("[9999]") && err.contains("[10000]"),
            "{err}"
        );
    }

    #[test]
    fn check_labels_reports_first_non_digit() {
        let ok = IdxU8 {
            dims: vec![10],
            data: (0..10).collect(),
        };
        assert!(check_labels(&ok, "l.gz").is_ok());
        let bad = IdxU8 {
            dims: vec![4],
            data: vec![3, 9, 10, 200],
        };
        let err = check_labels(&bad, "l.gz").unwrap_err().to_string();
        assert!(
            err.contains("l.gz") && err.contains("label 10 at index 2"),
            "{err}"
        );
    }
}
