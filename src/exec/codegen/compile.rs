//! The system C compiler, the kernel caches and the background compile thread (see the
//! [module docs](super)).

use super::emit::SYMBOL;
use super::Stats;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The generated function: `(param pointers, output base, start, end)`.
pub(super) type KernelFn = unsafe extern "C" fn(*const *const c_void, *mut c_void, i64, i64);

/// Bumped whenever the generated code's meaning changes, so stale shared objects in a
/// disk cache are never loaded.
const FORMAT: &str = "tapeflow-codegen-1";

/// One kernel's compilation, shared by every program whose source is the same.
pub(super) struct Slot {
    /// The loaded function as an address; 0 until it is ready.
    func: AtomicUsize,
    /// Whether compiling (or loading) has finished, successfully or not.
    done: Mutex<bool>,
    finished: Condvar,
    /// Keeps the shared object mapped for as long as the process runs (slots are never
    /// dropped: they live in [`SLOTS`]).
    lib: OnceLock<libloading::Library>,
}

impl Slot {
    /// The function, if it is loaded.
    pub(super) fn get(&self) -> Option<KernelFn> {
        match self.func.load(Ordering::Acquire) {
            0 => None,
            // SAFETY: a non-zero value is only ever stored by `finish`, from a symbol of
            // type `KernelFn` in a library that is never unloaded.
            f => Some(unsafe { std::mem::transmute::<usize, KernelFn>(f) }),
        }
    }

    /// Blocks until compilation has finished; the function, if it succeeded.
    pub(super) fn wait(&self) -> Option<KernelFn> {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            done = self.finished.wait(done).unwrap_or_else(|e| e.into_inner());
        }
        self.get()
    }

    fn finish(&self, result: Result<(libloading::Library, KernelFn), String>) {
        match result {
            Ok((lib, f)) => {
                let _ = self.lib.set(lib);
                self.func.store(f as usize, Ordering::Release);
            }
            Err(why) => {
                FAILED.fetch_add(1, Ordering::Relaxed);
                warn_once(&format!(
                    "generating code for a fused loop failed ({why}); it runs in the interpreter"
                ));
            }
        }
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.finished.notify_all();
    }
}

/// Every kernel requested in this process, by the hash of its source: identical fused
/// loops (the same region in two plans) share one compilation and one library.
static SLOTS: Mutex<BTreeMap<[u8; 32], Arc<Slot>>> = Mutex::new(BTreeMap::new());

static COMPILED: AtomicUsize = AtomicUsize::new(0);
static DISK_HITS: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);
static COMPILE_NANOS: AtomicU64 = AtomicU64::new(0);

pub(super) fn stats() -> Stats {
    Stats {
        compiled: COMPILED.load(Ordering::Relaxed),
        disk_hits: DISK_HITS.load(Ordering::Relaxed),
        failed: FAILED.load(Ordering::Relaxed),
        compile_time: Duration::from_nanos(COMPILE_NANOS.load(Ordering::Relaxed)),
    }
}

/// Prints `msg` to stderr, once per process for all such messages (the first reason
/// is the one worth reading; the rest repeat it).
fn warn_once(msg: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| eprintln!("tapeflow: {msg}"));
}

/// The kernel of `source`: already requested, or queued for the compile thread now.
pub(super) fn request(source: &Arc<str>) -> Arc<Slot> {
    let key: [u8; 32] = Sha256::digest(source.as_bytes()).into();
    let mut slots = SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = slots.get(&key) {
        return s.clone();
    }
    let slot = Arc::new(Slot {
        func: AtomicUsize::new(0),
        done: Mutex::new(false),
        finished: Condvar::new(),
        lib: OnceLock::new(),
    });
    slots.insert(key, slot.clone());
    drop(slots);
    if let Err(why) = enqueue(Job {
        source: source.clone(),
        slot: slot.clone(),
    }) {
        slot.finish(Err(why));
    }
    slot
}

struct Job {
    source: Arc<str>,
    slot: Arc<Slot>,
}

/// Hands `job` to the compile thread (started on first use). One thread, jobs in the
/// order they come: a 2-core machine has no spare core for parallel compiles, and the
/// interpreter runs meanwhile anyway.
fn enqueue(job: Job) -> Result<(), String> {
    static QUEUE: OnceLock<Result<Mutex<mpsc::Sender<Job>>, String>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("tapeflow-cc".into())
            .spawn(move || {
                lower_priority();
                for job in rx {
                    // the compiler's pipes and paths are not tensor buffers: hidden from
                    // allocation counters like a third-party kernel's scratch
                    let result = crate::exec::buffers::in_backend(|| build(&job.source));
                    job.slot.finish(result);
                }
            })
            .map(|_| Mutex::new(tx))
            .map_err(|e| format!("cannot start the compile thread: {e}"))
    });
    let tx = queue.as_ref().map_err(Clone::clone)?;
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .map_err(|_| "the compile thread has stopped".to_string())
}

/// Makes this thread, and the compiler processes it starts, yield the CPU to the
/// threads running plans: on a machine with as many busy threads as cores, a compile
/// at normal priority would slow the interpreter it is meant to replace (W5's first
/// call on 2 cores took twice as long). Linux keeps a nice value per thread, which
/// child processes inherit; elsewhere the compile runs at normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority has no memory-safety preconditions; on Linux, `who` = 0 with
    // PRIO_PROCESS names the calling thread. A failure leaves the priority as it was.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}

/// The C compiler found at run time, its identity and the flags for this CPU.
pub(super) struct Toolchain {
    /// The program and any arguments that came with it in `$CC`.
    cc: Vec<String>,
    /// The first line of `cc --version` (part of the disk cache key).
    version: String,
    flags: Vec<&'static str>,
    cache: Option<PathBuf>,
}

/// The toolchain, found once per process: `$CC`, else the first of `cc`, `gcc`,
/// `clang` that answers `--version`.
pub(super) fn toolchain() -> &'static Result<Toolchain, String> {
    static TOOLCHAIN: OnceLock<Result<Toolchain, String>> = OnceLock::new();
    TOOLCHAIN.get_or_init(|| {
        let from_env = std::env::var("CC").ok().filter(|s| !s.trim().is_empty());
        let candidates: Vec<Vec<String>> = match &from_env {
            Some(cc) => vec![cc.split_whitespace().map(String::from).collect()],
            None => ["cc", "gcc", "clang"]
                .iter()
                .map(|c| vec![c.to_string()])
                .collect(),
        };
        for cc in candidates {
            let out = Command::new(&cc[0])
                .args(&cc[1..])
                .arg("--version")
                .output();
            if let Some(out) = out.ok().filter(|o| o.status.success()) {
                let version = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                return Ok(Toolchain {
                    cc,
                    version,
                    flags: flags(),
                    cache: cache_dir(),
                });
            }
        }
        Err(match from_env {
            Some(cc) => format!("the C compiler `{cc}` (from $CC) does not run"),
            None => "no C compiler found (tried cc, gcc, clang)".to_string(),
        })
    })
}

/// Compiler flags: optimize and vectorize, but keep every IEEE operation as written
/// (no FMA contraction, no reassociation: no -ffast-math), and the vector ISA of this
/// CPU by run-time detection (explicit extensions, which every gcc ≥ 7 and clang know,
/// with 512-bit vectors preferred where AVX-512 is there).
///
/// `-fno-trapping-math` lets gcc if-convert the selects of the math functions into
/// blends (with traps "visible", it keeps them as branches and vectorizes nothing); it
/// changes no value, only which floating-point exception flags may be raised, which
/// Rust does not observe either. `-fschedule-insns` (off by default on x86) interleaves
/// the independent polynomial chains: W5's loop ran 1.75 → 1.52 ns per element on one
/// Zen 5 core; scheduling reorders only independent instructions.
fn flags() -> Vec<&'static str> {
    let mut f = vec![
        "-O3",
        "-ffp-contract=off",
        "-fno-math-errno",
        "-fno-trapping-math",
        "-fschedule-insns",
        "-fPIC",
        "-shared",
    ];
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let avx2 = has!("avx2") && has!("fma") && has!("bmi1") && has!("bmi2");
        let avx512 = avx2
            && has!("avx512f")
            && has!("avx512dq")
            && has!("avx512vl")
            && has!("avx512bw")
            && has!("avx512cd");
        if avx2 {
            f.extend(["-mavx2", "-mfma", "-mbmi", "-mbmi2", "-mf16c", "-mpopcnt"]);
        }
        if avx512 {
            f.extend([
                "-mavx512f",
                "-mavx512dq",
                "-mavx512vl",
                "-mavx512bw",
                "-mavx512cd",
                "-mprefer-vector-width=512",
            ]);
        }
    }
    f
}

/// Where compiled kernels are kept across processes: `$TAPEFLOW_CACHE_DIR`, else
/// `tapeflow-kernels` in the user's cache directory (`$XDG_CACHE_HOME`, `~/.cache`),
/// else in the temp directory. `None` when it cannot be made private to this user
/// (then each process compiles its kernels in a scratch directory).
fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = env("TAPEFLOW_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("tapeflow-kernels")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("tapeflow-kernels")))
        .unwrap_or_else(|| std::env::temp_dir().join("tapeflow-kernels"));
    make_private_dir(&dir).ok()?;
    sweep_orphans(&dir, ORPHAN_AGE);
    Some(dir)
}

/// How old a compile's temporary file must be before a later process deletes it as
/// an orphan. A compile takes well under a second; only a process that ended while its
/// compile thread was writing (killed, or returning from `main` meanwhile) leaves one.
const ORPHAN_AGE: Duration = Duration::from_secs(600);

/// Deletes the temporary files (named by [`unique`]: `{key}.{pid}.{n}.tmp{ext}`) that
/// processes which ended mid-compile left in the cache directory `dir`, once they are
/// `age` old, so the cache does not grow by a pair of files per interrupted compile.
/// Returns how many it deleted; a file it cannot read or delete is left alone.
fn sweep_orphans(dir: &Path, age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = std::time::SystemTime::now();
    let so = format!(".tmp.{}", std::env::consts::DLL_EXTENSION);
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.ends_with(".tmp.c") || name.ends_with(&so)
        })
        .filter(|e| {
            let modified = e.metadata().and_then(|m| m.modified());
            modified.is_ok_and(|m| now.duration_since(m).is_ok_and(|d| d >= age))
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Creates `dir` (owner-only on Unix) if needed and checks that only this user can
/// write to it: the cache holds code this process will load and run.
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)?;
    if owned_privately(dir) {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{} is writable by other users",
            dir.display()
        )))
    }
}

/// Whether `path` belongs to this user and no one else may write to it.
fn owned_privately(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        std::fs::symlink_metadata(path).is_ok_and(|m| m.uid() == me && m.mode() & 0o022 == 0)
    }
    #[cfg(not(unix))]
    {
        path.exists()
    }
}

/// A name no other process or thread of this process uses.
fn unique(prefix: &str, ext: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}.{}.{}.tmp{ext}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Compiles `source` (or finds it in the disk cache) and loads it.
fn build(source: &str) -> Result<(libloading::Library, KernelFn), String> {
    let tc = toolchain().as_ref().map_err(Clone::clone)?;
    let mut h = Sha256::new();
    for part in [
        FORMAT,
        &tc.cc.join(" "),
        &tc.version,
        &tc.flags.join(" "),
        source,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let key: String = h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (dir, scratch) = match &tc.cache {
        Some(d) => (d.clone(), false),
        None => {
            let d = std::env::temp_dir().join(unique("tapeflow-kernels", ""));
            make_private_dir(&d).map_err(|e| format!("no directory to compile in: {e}"))?;
            (d, true)
        }
    };
    let so = dir.join(format!("{key}.{}", std::env::consts::DLL_EXTENSION));
    let cached = !scratch && so.is_file() && owned_privately(&so);
    if cached {
        if let Ok(loaded) = load(&so) {
            DISK_HITS.fetch_add(1, Ordering::Relaxed);
            return Ok(loaded);
        }
    }
    let t = Instant::now();
    let c = dir.join(format!("{key}.c"));
    let tmp_c = dir.join(unique(&key, ".c"));
    let tmp_so = dir.join(unique(
        &key,
        &format!(".{}", std::env::consts::DLL_EXTENSION),
    ));
    std::fs::write(&tmp_c, source).map_err(|e| format!("writing {}: {e}", tmp_c.display()))?;
    let out = Command::new(&tc.cc[0])
        .args(&tc.cc[1..])
        .args(&tc.flags)
        .arg("-o")
        .arg(&tmp_so)
        .arg(&tmp_c)
        .arg("-lm")
        .output();
    let result = match out {
        Ok(o) if o.status.success() => {
            // rename is atomic: a concurrent process sees the whole file or none
            std::fs::rename(&tmp_c, &c)
                .and_then(|()| std::fs::rename(&tmp_so, &so))
                .map_err(|e| format!("renaming into {}: {e}", dir.display()))
        }
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let err: String = err.lines().take(6).collect::<Vec<_>>().join(" | ");
            Err(format!("`{}` failed: {err}", tc.cc.join(" ")))
        }
        Err(e) => Err(format!("cannot run `{}`: {e}", tc.cc.join(" "))),
    };
    let _ = std::fs::remove_file(&tmp_c);
    let _ = std::fs::remove_file(&tmp_so);
    result?;
    let loaded = load(&so);
    if scratch {
        // the mapping outlives the files
        let _ = std::fs::remove_dir_all(&dir);
    }
    COMPILED.fetch_add(1, Ordering::Relaxed);
    COMPILE_NANOS.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    loaded
}

fn load(so: &Path) -> Result<(libloading::Library, KernelFn), String> {
    // SAFETY: the library is one this module compiled from generated C source: its
    // initializers are the C runtime's, and it exports `SYMBOL` with type `KernelFn`.
    unsafe {
        let lib = libloading::Library::new(so).map_err(|e| format!("loading: {e}"))?;
        let f: KernelFn = *lib
            .get::<KernelFn>(SYMBOL.as_bytes())
            .map_err(|e| format!("loading: {e}"))?;
        Ok((lib, f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only compile temporaries older than the age go; finished kernels, their sources
    /// and a compile still running stay.
    #[test]
    fn sweeping_deletes_only_old_temporaries() {
        let dir = std::env::temp_dir().join(unique("tapeflow-sweep-test", ""));
        make_private_dir(&dir).unwrap();
        let dll = std::env::consts::DLL_EXTENSION;
        let old_so = dir.join(format!("ab.1.0.tmp.{dll}"));
        let old_c = dir.join("ab.1.1.tmp.c");
        let running = dir.join("cd.2.0.tmp.c");
        let kept = [
            dir.join(format!("ab.{dll}")),
            dir.join("ab.c"),
            dir.join("notes.tmp"),
        ];
        let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        for path in [&old_so, &old_c, &running].into_iter().chain(&kept) {
            let f = std::fs::File::create(path).unwrap();
            if path != &running {
                f.set_modified(hour_ago).unwrap();
            }
        }
        assert_eq!(sweep_orphans(&dir, ORPHAN_AGE), 2);
        assert!(!old_so.exists() && !old_c.exists());
        assert!(running.exists() && kept.iter().all(|p| p.exists()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
