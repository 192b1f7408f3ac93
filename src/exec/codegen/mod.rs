//! Generated code for fused loops: each elementwise fused region becomes one C loop,
//! compiled by the system's C compiler and loaded as a shared object (torch.compile's
//! CPU approach), with the fused-loop interpreter (`exec::fused`) as the fallback.
//!
//! **Why.** The interpreter runs a fused region one instruction at a time over tiles of
//! 1024 elements: every intermediate value goes through a register tile in L1. The
//! generated loop computes each element's whole expression in vector registers, with
//! the transcendentals inlined, so the only memory traffic is the params and the result.
//!
//! **What is generated.** `emit.rs` lowers a [`FusedExpr`] of elementwise instructions
//! (unary, binary, compare, select, casts, `broadcast`, `reshape` of a param) over
//! f32, f64 and i64 to one function `tf_kernel(params, out, start, end)` that computes
//! the output elements `start..end` in row-major order. The loop's shape is baked in
//! (coalesced exactly as the interpreter does it): an outer loop over the rows of the
//! innermost axis, each row's offsets from a division by constants, and an inner loop
//! whose loads have constant strides (0 for a broadcast value, hoisted out of the row)
//! and which carries `#pragma GCC ivdep`, so the compiler vectorizes it without alias
//! checks. That is sound because each output element depends only on the same index of
//! any param it may overwrite in place (the memory plan's rule).
//!
//! A region with a sum is generated too, adding in `reduce::sum`'s order (as the
//! interpreter's accumulator does). A sum over every axis (a loss, `sum(2·r·x)` in a
//! gradient): the row loop computes the summed elements a block of 1024 at a time into
//! a stack buffer, which is added to 8 lanes (lane `l` takes the elements `≡ l` mod 8 of
//! the whole chunks of 8, then a fixed tree, then the rest in order). A sum over some
//! axes (a softmax's row sums): per output, its lane (at most 1024 elements) is computed
//! into a buffer and folded from +0 one reduced axis at a time, the innermost first.
//! The instructions after the sum run once per output, their params read at its index.
//! Of a region with a matmul prologue, the epilogue (bias, activation, …) is generated:
//! the interpreter runs the product into the output buffer, and the loop reads each
//! element's product there just before writing the element (as an operand overwritten in
//! place is read). A longer lane and empty loops stay with the interpreter.
//!
//! **Bit-identical to the interpreter.** Every op calls a C function of `prelude.c`
//! whose operations are those of the op's Rust scalar function, in the same order: the
//! f32 `exp`/`ln`/`sin`/`cos`/`tanh` are an operation-for-operation port of
//! `exec::kernels::fastmath` (with its constants, written by the emitter from the Rust
//! ones; its `mul_add`s as `__builtin_fma`, one rounding on every ISA; branch-free:
//! selects become blends, so they vectorize), the f64 ones and `pow` call the same C library functions that Rust's
//! methods call, and casts convert as Rust's `as` does. The compiler gets
//! `-O3 -ffp-contract=off -fno-math-errno -fno-trapping-math` and never `-ffast-math`:
//! no FMA contraction (only the written-out ones), no reassociation, signed zeros and NaNs honoured, so each IEEE
//! operation rounds as written (`-fno-trapping-math` only lets gcc turn the selects into
//! blends; without it the loop does not vectorize; `-fschedule-insns` interleaves the
//! independent polynomial chains, 15% faster on W5). Vector width comes from run-time CPU
//! detection (AVX-512 with 512-bit vectors, or AVX2+FMA — which cannot change a bit,
//! since nothing contracts — or the baseline, where the written-out FMAs become calls
//! of the C library's correctly rounded `fmaf`). One thing is not pinned: the sign and
//! payload of a NaN result. IEEE 754 leaves them open, both rustc and gcc commute `+`
//! and `×`, and with two NaN operands x86 returns the first, so where two NaNs meet the
//! NaN may differ (the interpreter's own AVX-512, AVX2 and scalar copies are in the same
//! position); a NaN element is NaN in both. `tests/codegen.rs` runs every op, compare,
//! select, cast and broadcast pattern through both paths on special and random values
//! and compares bits.
//!
//! **Threads.** The generated function computes a range of output elements; the
//! interpreter's rayon chunking calls it per chunk. Elements are independent, so the
//! result never depends on the number of threads.
//!
//! **Compiling without slowing first calls.** A program lowers its region when it is
//! made (at plan time, microseconds) and asks for the kernel: kernels are shared in
//! memory by the hash of their source, so the same region in another plan costs
//! nothing. A single background thread, at the lowest priority (its compilers inherit
//! it, so they take only idle CPU from the threads running plans), compiles requested
//! kernels in order (W5's loop: about 0.3 s of gcc 12 on one Zen 5 core); the
//! interpreter runs the region until the kernel is loaded, and from then on the
//! generated code does (the swap is invisible: the bits are the same). Compiled shared
//! objects are kept on disk (a later process loads one in about 2 ms), keyed by a hash
//! of the source, the compiler's identity and the flags, in `$TAPEFLOW_CACHE_DIR` or `tapeflow-kernels` under the user's cache
//! directory (`$XDG_CACHE_HOME`, `~/.cache`, else the temp directory); a directory
//! another user could write to is never used (the cache holds code this process runs).
//! The generated `.c` file sits beside its `.so` for reading. A process that ends
//! while its compile thread is writing leaves that compile's temporary files; the
//! next process to open the cache deletes those older than ten minutes.
//!
//! **Without a C compiler.** The compiler is `$CC`, else the first of `cc`, `gcc`,
//! `clang` that runs, found on first use; if there is none, or a compile fails, the
//! region runs in the interpreter and tapeflow says why once on stderr.
//!
//! **Choosing.** [`Codegen`]: the `TAPEFLOW_CODEGEN` environment variable
//! (`off`, `auto`, `force`) sets the default for new programs;
//! [`Plan::set_codegen`](crate::exec::Plan::set_codegen) sets it for one plan.
//! `auto` generates loops of at least [`AUTO_MIN_ELEMS`] elements in the background,
//! shorter ones once they are hot (the interpreter has run [`HOT_ELEMS`] of their
//! elements, counted over calls), and those of a plan whose [`Plan::request_generated_code`](crate::exec::Plan::request_generated_code) was called
//! at once (a half-batch loop body's, fused for the whole batch's length);
//! `force` generates every region it can and waits for the compiler before running.

mod compile;
mod emit;

use crate::ir::FusedExpr;
use crate::tensor::{DType, Data};
use compile::{KernelFn, Slot};
use smallvec::SmallVec;
use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Whether fused loops run generated code or the interpreter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codegen {
    /// The interpreter only.
    Off,
    /// Loops of at least [`AUTO_MIN_ELEMS`] elements are compiled in the background,
    /// shorter ones once they are hot ([`HOT_ELEMS`]); the interpreter runs them until
    /// the kernel is loaded. The default.
    Auto,
    /// Every region that can be generated is, and a run waits until its kernels are
    /// compiled (the interpreter runs only what cannot be generated or failed to
    /// compile). For tests and benchmarks.
    Force,
}

/// The smallest loop that [`Codegen::Auto`] compiles: below it the interpreter is
/// about as fast and a compile (~0.1 s of a core) would not pay for itself soon.
/// `passes::TUNED_MIN_FUSED_ELEMS` is the same length (see there for the measurements).
pub const AUTO_MIN_ELEMS: usize = 1 << 13;

/// How many elements of a loop shorter than [`AUTO_MIN_ELEMS`] the interpreter runs,
/// summed over calls, before [`Codegen::Auto`] compiles it in the background: a
/// 1000-element loop after 1049 calls, a 64-element one after 16384. Small loops pay
/// the interpreter's fixed cost per call (binding, tiles, a loop per instruction),
/// which generated code does not: W4 (linear regression over 1000 points, three such
/// loops) ran 4.70 µs a step in the interpreter and 2.49 µs generated (median of
/// 50,000 calls each, 2-core Zen 4 VM). A compile costs ≈0.1 s of a background thread
/// once per distinct loop (and nothing in later processes, from the disk cache).
pub const HOT_ELEMS: u64 = 1 << 20;

impl Codegen {
    fn code(self) -> u8 {
        match self {
            Codegen::Off => 0,
            Codegen::Auto => 1,
            Codegen::Force => 2,
        }
    }

    fn from_code(c: u8) -> Codegen {
        match c {
            0 => Codegen::Off,
            1 => Codegen::Auto,
            _ => Codegen::Force,
        }
    }

    /// The default for new programs: `TAPEFLOW_CODEGEN` (`off`, `auto` or `force`;
    /// read once), else [`Codegen::Auto`].
    pub fn from_env() -> Codegen {
        static MODE: OnceLock<Codegen> = OnceLock::new();
        *MODE.get_or_init(|| match std::env::var("TAPEFLOW_CODEGEN").as_deref() {
            Ok("off") => Codegen::Off,
            Ok("force") => Codegen::Force,
            Ok("auto") | Ok("") | Err(_) => Codegen::Auto,
            Ok(other) => {
                eprintln!(
                    "tapeflow: TAPEFLOW_CODEGEN={other:?} is not off, auto or force; using auto"
                );
                Codegen::Auto
            }
        })
    }
}

/// Process-wide counters of the kernel compiler.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Kernels compiled by the C compiler in this process.
    pub compiled: usize,
    /// Kernels loaded from the disk cache instead.
    pub disk_hits: usize,
    /// Kernels that failed to compile or load (those regions run in the interpreter).
    pub failed: usize,
    /// Wall time spent compiling (the `compiled` kernels together).
    pub compile_time: Duration,
}

/// The kernel compiler's counters so far.
pub fn stats() -> Stats {
    compile::stats()
}

/// Whether a C compiler was found (looking for it on the first call). When false,
/// every fused loop runs in the interpreter.
pub fn compiler_available() -> bool {
    compile::toolchain().is_ok()
}

/// The generated code of one fused region, as a fused-loop `Program` holds it.
pub struct Kernel {
    lowered: emit::Lowered,
    source: Arc<str>,
    mode: AtomicU8,
    slot: OnceLock<Arc<Slot>>,
    /// Elements run in the interpreter in [`Codegen::Auto`] before compiling was asked
    /// for (see [`HOT_ELEMS`]).
    interpreted: AtomicU64,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("mode", &self.mode())
            .field("ready", &self.slot.get().and_then(|s| s.get()).is_some())
            .finish()
    }
}

impl Kernel {
    /// Lowers `e` (for operands of `params` types; `shape` is the fused node's) and,
    /// unless the [default mode](Codegen::from_env) says otherwise, asks for it to be
    /// compiled. `None` when the region cannot be generated (see the `emit` module).
    /// `extra`: instructions whose values are further outputs of the result's type (a
    /// step group's members, see `exec::group`), written by [`Ready::call_with`].
    pub fn new(
        e: &FusedExpr,
        params: &[(DType, &[usize])],
        shape: &[usize],
        extra: &[usize],
    ) -> Option<Kernel> {
        let lowered = emit::lower(e, params, shape, extra).ok()?;
        let k = Kernel {
            source: Arc::from(lowered.source.as_str()),
            lowered,
            mode: AtomicU8::new(Codegen::Off.code()),
            slot: OnceLock::new(),
            interpreted: AtomicU64::new(0),
        };
        k.set_mode(Codegen::from_env());
        Some(k)
    }

    fn mode(&self) -> Codegen {
        Codegen::from_code(self.mode.load(Ordering::Relaxed))
    }

    /// Sets how this region runs; with [`Codegen::Force`], waits until its kernel is
    /// compiled (or has failed to).
    pub fn set_mode(&self, mode: Codegen) {
        self.mode.store(mode.code(), Ordering::Relaxed);
        match mode {
            Codegen::Off => {}
            Codegen::Auto if self.lowered.elems < AUTO_MIN_ELEMS => {}
            Codegen::Auto => {
                self.slot();
            }
            Codegen::Force => {
                self.slot().wait();
            }
        }
    }

    /// In [`Codegen::Auto`], starts compiling the kernel in the background even when the
    /// loop is shorter than [`AUTO_MIN_ELEMS`]: for a loop that runs many times per call,
    /// such as a half-batch loop body's (`exec/row_split.rs`), whose regions were fused
    /// for the whole batch's length.
    pub fn request(&self) {
        if self.mode() == Codegen::Auto {
            self.slot();
        }
    }

    fn slot(&self) -> &Arc<Slot> {
        self.slot.get_or_init(|| compile::request(&self.source))
    }

    /// [`Kernel::ready`] for a run about to happen: in [`Codegen::Auto`], while the
    /// loop runs in the interpreter because it is short, counts its elements and starts
    /// compiling it once they reach [`HOT_ELEMS`].
    pub fn ready_to_run(&self) -> Option<Ready<'_>> {
        if self.slot.get().is_none() && self.mode() == Codegen::Auto {
            let n = self.lowered.elems as u64;
            if self.interpreted.fetch_add(n, Ordering::Relaxed) + n >= HOT_ELEMS {
                self.slot();
            }
        }
        self.ready()
    }

    /// The generated function, if this region runs it now.
    pub fn ready(&self) -> Option<Ready<'_>> {
        let f = match self.mode() {
            Codegen::Off => None,
            Codegen::Auto => self.slot.get().and_then(|s| s.get()),
            Codegen::Force => {
                let s = self.slot();
                s.get().or_else(|| s.wait())
            }
        }?;
        Some(Ready { kernel: self, f })
    }

    /// The generated C source (for inspection).
    pub fn source(&self) -> &str {
        &self.source
    }
}

/// A loaded kernel, ready to be bound to buffers and called.
#[derive(Clone, Copy)]
pub struct Ready<'a> {
    kernel: &'a Kernel,
    f: KernelFn,
}

/// The param buffers of one call; a null pointer marks a param overwritten in place,
/// which the generated code reads from the output buffer.
pub struct Bound {
    ptrs: SmallVec<[*const c_void; 8]>,
}

// SAFETY: the pointers are read-only views of the call's operand buffers, which outlive
// every chunk of the call (the caller joins its rayon work before returning).
unsafe impl Send for Bound {}
// SAFETY: as above; nothing writes through them.
unsafe impl Sync for Bound {}

impl<'a> Ready<'a> {
    /// Checks the params against what the kernel was generated for and binds them
    /// (`None` for a param overwritten in place: it is the output buffer).
    ///
    /// # Panics
    /// If a param's dtype or length differs from the ones the kernel was generated for
    /// (a bug in the caller: the plan's types are fixed).
    pub fn bind(&self, params: &[Option<&Data>]) -> Bound {
        let want = &self.kernel.lowered.params;
        assert_eq!(params.len(), want.len(), "fused kernel: operand count");
        let ptrs: SmallVec<[*const c_void; 8]> = params
            .iter()
            .zip(want)
            .map(|(d, &(dt, n))| match d {
                None => {
                    assert_eq!(
                        (dt, n),
                        self.kernel.lowered.out,
                        "fused kernel: an operand overwritten in place has the result's type"
                    );
                    std::ptr::null()
                }
                Some(d) => {
                    assert!(
                        d.dtype() == dt && d.len() == n,
                        "fused kernel: operand {:?}[{}] where {dt:?}[{n}] was generated",
                        d.dtype(),
                        d.len()
                    );
                    let p = match d {
                        Data::F32(a) => a.as_slice().map(|s| s.as_ptr().cast()),
                        Data::F64(a) => a.as_slice().map(|s| s.as_ptr().cast()),
                        Data::I64(a) => a.as_slice().map(|s| s.as_ptr().cast()),
                    };
                    p.expect("kernel results are in standard layout")
                }
            })
            .collect();
        Bound { ptrs }
    }

    /// Computes output elements `off..off + chunk.len()` into `chunk`.
    ///
    /// # Panics
    /// If `O` is not the result's element type, the chunk runs past the output, or the
    /// kernel has further outputs (see [`Ready::call_with`]).
    pub fn call<O: Copy + 'static>(&self, b: &Bound, chunk: &mut [MaybeUninit<O>], off: usize) {
        // SAFETY: no further outputs are passed, and the assertion in `call_with`
        // checks the kernel writes none.
        unsafe { self.call_with(b, chunk, off, &[]) }
    }

    /// [`Ready::call`] for a kernel with further outputs: it also writes their elements
    /// `off..off + chunk.len()`, `extra[k]` being output `k`'s element 0.
    ///
    /// # Safety
    /// Each `extra[k]` points to a buffer of the result's element type and length that
    /// nothing else reads or writes at elements `off..off + chunk.len()` during the call.
    ///
    /// # Panics
    /// As [`Ready::call`]; and if `extra` has not one pointer per further output.
    pub unsafe fn call_with<O: Copy + 'static>(
        &self,
        b: &Bound,
        chunk: &mut [MaybeUninit<O>],
        off: usize,
        extra: &[*mut c_void],
    ) {
        assert_eq!(
            extra.len(),
            self.kernel.lowered.extra_outs,
            "fused kernel: further outputs"
        );
        let (dt, n) = self.kernel.lowered.out;
        let elem_ok = match dt {
            DType::F32 => std::any::TypeId::of::<O>() == std::any::TypeId::of::<f32>(),
            DType::F64 => std::any::TypeId::of::<O>() == std::any::TypeId::of::<f64>(),
            DType::I64 => std::any::TypeId::of::<O>() == std::any::TypeId::of::<i64>(),
        };
        assert!(elem_ok, "fused kernel: output element type");
        assert!(
            off + chunk.len() <= n,
            "fused kernel: chunk past the output"
        );
        // the generated code indexes the output (and in-place params) from element 0
        let base = chunk.as_mut_ptr().wrapping_sub(off).cast::<c_void>();
        let built: SmallVec<[*const c_void; 8]>;
        let ptrs = if extra.is_empty() && b.ptrs.iter().all(|p| !p.is_null()) {
            b.ptrs.as_ptr() // the bound pointers as they are
        } else {
            built = (b.ptrs.iter())
                .map(|&p| if p.is_null() { base.cast_const() } else { p })
                .chain(extra.iter().map(|p| p.cast_const()))
                .collect();
            built.as_ptr()
        };
        // SAFETY: `bind` checked each param's dtype and length against the ones the code
        // was generated for, which reads only elements below those lengths; the code
        // writes exactly output elements off..off + chunk.len(), all inside `chunk` (and
        // of each further output, which the caller vouches for), and reads an in-place
        // param only at the element it is about to write.
        unsafe { (self.f)(ptrs, base, off as i64, (off + chunk.len()) as i64) }
    }
}
