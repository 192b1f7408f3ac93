//! The IDX reader and the MNIST loader, through the public API.
//!
//! The real data in `data/mnist` is checked against the facts in its README (label
//! counts, the sha256 of the decompressed files); damaged copies, written to a fresh
//! folder under the system temp dir per test, must each give an `Err` naming the file.

use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;
use tapeflow::data::idx::{decode_idx, default_mnist_dir, load_mnist_raw, read_idx_gz, MnistRaw};
use tapeflow::Error;

const FILES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];
const TEST_LABELS_SHA256: &str = "b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b";

/// The real MNIST, loaded once and shared by the tests that read it.
fn mnist() -> &'static MnistRaw {
    static MNIST: OnceLock<MnistRaw> = OnceLock::new();
    MNIST.get_or_init(|| {
        let start = Instant::now();
        let mnist = load_mnist_raw(&default_mnist_dir()).expect("load data/mnist");
        eprintln!("load_mnist_raw took {:.3} s", start.elapsed().as_secs_f64());
        mnist
    })
}

/// A folder of its own under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tapeflow-idx-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// Copies the named real MNIST files into this folder.
    fn with_real(self, files: &[&str]) -> TempDir {
        for file in files {
            std::fs::copy(default_mnist_dir().join(file), self.0.join(file)).expect("copy");
        }
        self
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// IDX bytes of unsigned bytes with the given dims and payload (which may not fit).
fn idx_bytes(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(payload);
    bytes
}

fn write_gz(path: &Path, bytes: &[u8]) {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(bytes).unwrap();
    std::fs::write(path, gz.finish().unwrap()).unwrap();
}

/// The message of a `Data` error, asserting it names `name`.
fn data_err(result: tapeflow::Result<impl std::fmt::Debug>, name: &str) -> String {
    match result {
        Err(e @ Error::Data(_)) => {
            let msg = e.to_string();
            assert!(msg.contains(name), "message does not name {name}: {msg}");
            msg
        }
        other => panic!("expected Error::Data naming {name}, got {other:?}"),
    }
}

fn label_counts(labels: &[u8]) -> [usize; 10] {
    let mut counts = [0; 10];
    for &l in labels {
        counts[usize::from(l)] += 1;
    }
    counts
}

#[test]
fn real_mnist_has_readme_shapes_and_label_counts() {
    let m = mnist();
    assert_eq!(m.train_images.dims, [60000, 28, 28]);
    assert_eq!(m.train_images.data.len(), 60000 * 784);
    assert_eq!(m.train_labels.dims, [60000]);
    assert_eq!(m.test_images.dims, [10000, 28, 28]);
    assert_eq!(m.test_images.data.len(), 10000 * 784);
    assert_eq!(m.test_labels.dims, [10000]);
    assert_eq!(
        label_counts(&m.train_labels.data),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        label_counts(&m.test_labels.data),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    assert_eq!(m.train_labels.data[..5], [5, 0, 4, 1, 9]);
    assert_eq!(m.test_labels.data[..5], [7, 2, 1, 0, 4]);
}

#[test]
fn real_mnist_decodes_to_the_readme_decompressed_checksums() {
    // Rebuilding each file's header from the dims and hashing header + data must give
    // the README's sha256 of the decompressed file: the decode is byte-exact.
    let m = mnist();
    let cases = [
        (
            &m.train_images,
            0x0803,
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        (
            &m.train_labels,
            0x0801,
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        (
            &m.test_images,
            0x0803,
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        (
            &m.test_labels,
            0x0801,
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    ];
    for (idx, magic, sha) in cases {
        let mut hasher = Sha256::new();
        hasher.update(u32::to_be_bytes(magic));
        for &d in &idx.dims {
            hasher.update((d as u32).to_be_bytes());
        }
        hasher.update(&idx.data);
        assert_eq!(
            format!("{:x}", hasher.finalize()),
            sha,
            "dims {:?}",
            idx.dims
        );
    }
}

#[test]
fn real_mnist_pixels_look_like_digits() {
    let m = mnist();
    for (images, mean_lo, mean_hi) in [
        (&m.train_images, 0.1306, 0.1307),
        (&m.test_images, 0.1325, 0.1326),
    ] {
        let px = &images.data;
        assert_eq!(px.iter().min(), Some(&0));
        assert_eq!(px.iter().max(), Some(&255));
        // The well-known normalisation mean 0.1307 (train) of pixels scaled to [0, 1].
        let mean = px.iter().map(|&p| f64::from(p)).sum::<f64>() / px.len() as f64 / 255.0;
        assert!((mean_lo..mean_hi).contains(&mean), "mean {mean}");
        // Mostly background, and every image has some full-intensity ink.
        let zeros = px.iter().filter(|&&p| p == 0).count() as f64 / px.len() as f64;
        assert!((0.80..0.82).contains(&zeros), "zero fraction {zeros}");
        assert!(px
            .chunks_exact(784)
            .all(|img| img.iter().any(|&p| p >= 254)));
    }
}

#[test]
fn decode_idx_accepts_exact_payloads() {
    let idx = decode_idx(&idx_bytes(&[2, 1, 3], &[1, 2, 3, 4, 5, 6]), "ok").unwrap();
    assert_eq!(idx.dims, [2, 1, 3]);
    assert_eq!(idx.data, [1, 2, 3, 4, 5, 6]);
    let empty = decode_idx(&idx_bytes(&[0, 28], &[]), "empty").unwrap();
    assert_eq!((empty.dims, empty.data.len()), (vec![0, 28], 0));
    assert_eq!(
        format!("{idx:?}"),
        "IdxU8 { dims: [2, 1, 3], data: <6 bytes> }"
    );
}

#[test]
fn decode_idx_rejects_malformed_headers() {
    let short = data_err(decode_idx(&[0, 0, 8], "a.idx"), "a.idx");
    assert!(short.contains("3 bytes is too short"), "{short}");

    let magic = data_err(
        decode_idx(&[0x1f, 0x8b, 8, 1, 0, 0, 0, 0], "b.idx"),
        "b.idx",
    );
    assert!(
        magic.contains("not an IDX file") && magic.contains("1f 8b"),
        "{magic}"
    );

    let mut f32_file = idx_bytes(&[1], &[0, 0, 0, 0]);
    f32_file[2] = 0x0D;
    let ty = data_err(decode_idx(&f32_file, "c.idx"), "c.idx");
    assert!(
        ty.contains("0x0d (f32) is not supported") && ty.contains("only unsigned bytes (0x08)"),
        "{ty}"
    );

    let zero = data_err(decode_idx(&[0, 0, 8, 0], "d.idx"), "d.idx");
    assert!(zero.contains("0 dimensions"), "{zero}");

    // The header promises 3 dims but holds only 2.
    let mut missing_dim = idx_bytes(&[60000, 28], &[]);
    missing_dim[3] = 3;
    let header = data_err(decode_idx(&missing_dim, "e.idx"), "e.idx");
    assert!(
        header.contains("needs 16 bytes") && header.contains("only 12"),
        "{header}"
    );

    let huge = data_err(
        decode_idx(&idx_bytes(&[u32::MAX; 4], &[]), "f.idx"),
        "f.idx",
    );
    assert!(huge.contains("overflow"), "{huge}");
}

#[test]
fn decode_idx_rejects_truncated_and_trailing_payloads() {
    let truncated = data_err(decode_idx(&idx_bytes(&[2, 3], &[1; 5]), "t.idx"), "t.idx");
    assert!(
        truncated.contains("truncated") && truncated.contains("expected 6 bytes, found 5"),
        "{truncated}"
    );
    let trailing = data_err(decode_idx(&idx_bytes(&[2, 3], &[1; 7]), "t.idx"), "t.idx");
    assert!(
        trailing.contains("trailing") && trailing.contains("expected 6 bytes, found 7"),
        "{trailing}"
    );
}

#[test]
fn read_idx_gz_reads_and_checks_a_real_file() {
    let path = default_mnist_dir().join("t10k-labels-idx1-ubyte.gz");
    let labels = read_idx_gz(&path, Some(TEST_LABELS_SHA256)).unwrap();
    assert_eq!(labels, read_idx_gz(&path, None).unwrap());
    // Hex case does not matter.
    let upper = TEST_LABELS_SHA256.to_uppercase();
    assert_eq!(labels, read_idx_gz(&path, Some(&upper)).unwrap());
}

#[test]
fn checksum_mismatch_shows_both_hashes() {
    let path = default_mnist_dir().join("t10k-labels-idx1-ubyte.gz");
    let wrong = "0".repeat(64);
    let msg = data_err(
        read_idx_gz(&path, Some(&wrong)),
        "t10k-labels-idx1-ubyte.gz",
    );
    assert!(msg.contains("sha256 mismatch"), "{msg}");
    assert!(
        msg.contains(&wrong) && msg.contains(TEST_LABELS_SHA256),
        "{msg}"
    );
}

#[test]
fn truncated_gzip_file_is_an_error() {
    let dir = TempDir::new("truncated-gzip").with_real(&["t10k-labels-idx1-ubyte.gz"]);
    let path = dir.path("t10k-labels-idx1-ubyte.gz");
    let gz = std::fs::read(&path).unwrap();
    for keep in [gz.len() / 2, gz.len() - 4, 10, 1] {
        std::fs::write(&path, &gz[..keep]).unwrap();
        let msg = data_err(read_idx_gz(&path, None), "t10k-labels-idx1-ubyte.gz");
        assert!(msg.contains("corrupt gzip file"), "keep {keep}: {msg}");
    }
    std::fs::write(&path, b"").unwrap();
    let msg = data_err(read_idx_gz(&path, None), "t10k-labels-idx1-ubyte.gz");
    assert!(msg.contains("gzip magic"), "{msg}");
}

#[test]
fn corrupt_or_padded_gzip_stream_is_an_error() {
    let dir = TempDir::new("corrupt-gzip").with_real(&["t10k-labels-idx1-ubyte.gz"]);
    let path = dir.path("t10k-labels-idx1-ubyte.gz");
    let gz = std::fs::read(&path).unwrap();

    // A flipped byte in the compressed data: the deflate stream or the CRC breaks.
    let mut flipped = gz.clone();
    flipped[gz.len() / 2] ^= 0xff;
    std::fs::write(&path, &flipped).unwrap();
    let msg = data_err(read_idx_gz(&path, None), "t10k-labels-idx1-ubyte.gz");
    assert!(msg.contains("corrupt gzip file"), "{msg}");

    // Garbage after the gzip member.
    let mut padded = gz.clone();
    padded.extend_from_slice(b"junk");
    std::fs::write(&path, &padded).unwrap();
    let msg = data_err(read_idx_gz(&path, None), "t10k-labels-idx1-ubyte.gz");
    assert!(msg.contains("corrupt gzip file"), "{msg}");
}

#[test]
fn gzip_of_bad_idx_is_an_error_naming_the_file() {
    let dir = TempDir::new("bad-idx");

    let short = dir.path("short-payload.gz");
    write_gz(&short, &idx_bytes(&[10000], &[1; 9000]));
    let msg = data_err(read_idx_gz(&short, None), "short-payload.gz");
    assert!(
        msg.contains("truncated") && msg.contains("expected 10000 bytes, found 9000"),
        "{msg}"
    );

    let magic = dir.path("bad-magic.gz");
    write_gz(&magic, b"P5\n28 28\n255\n");
    let msg = data_err(read_idx_gz(&magic, None), "bad-magic.gz");
    assert!(msg.contains("not an IDX file"), "{msg}");

    // Dims that do not describe the payload: 60000 x 28 x 28 announced, 10 x 28 x 28 there.
    let dims = dir.path("wrong-dims.gz");
    write_gz(&dims, &idx_bytes(&[60000, 28, 28], &[0; 10 * 784]));
    let msg = data_err(read_idx_gz(&dims, None), "wrong-dims.gz");
    assert!(
        msg.contains("[60000, 28, 28]") && msg.contains("expected 47040000 bytes, found 7840"),
        "{msg}"
    );

    let i32_file = dir.path("i32.gz");
    let mut bytes = idx_bytes(&[1], &[0, 0, 0, 7]);
    bytes[2] = 0x0C;
    write_gz(&i32_file, &bytes);
    let msg = data_err(read_idx_gz(&i32_file, None), "i32.gz");
    assert!(msg.contains("(i32) is not supported"), "{msg}");
}

#[test]
fn load_mnist_raw_reports_a_missing_file() {
    let dir = TempDir::new("missing").with_real(&FILES[..3]);
    match load_mnist_raw(&dir.0) {
        Err(e @ Error::Io { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&*dir.path(FILES[3]).to_string_lossy()),
                "{msg}"
            );
        }
        other => panic!("expected Error::Io, got {other:?}"),
    }
}

#[test]
fn load_mnist_raw_rejects_a_swapped_or_damaged_file() {
    // A well-formed IDX file under a wrong name: caught by the checksum first.
    let dir = TempDir::new("swapped").with_real(&FILES[..1]);
    std::fs::copy(default_mnist_dir().join(FILES[3]), dir.path(FILES[1])).unwrap();
    let msg = data_err(load_mnist_raw(&dir.0), "train-labels-idx1-ubyte.gz");
    assert!(
        msg.contains("sha256 mismatch") && msg.contains(TEST_LABELS_SHA256),
        "{msg}"
    );

    // A train-labels file of the right format but the test set's size.
    write_gz(&dir.path(FILES[1]), &idx_bytes(&[10000], &[0; 10000]));
    let msg = data_err(load_mnist_raw(&dir.0), "train-labels-idx1-ubyte.gz");
    assert!(msg.contains("sha256 mismatch"), "{msg}");
}
