//! Debugging aids, after `tf.debugging`: a numerics check that stops at the first op
//! producing a NaN or an infinity.
//!
//! The switch is process-wide, like TensorFlow's `enable_check_numerics`. While it is on:
//! - every eager op checks its result; a non-finite value panics with
//!   [`crate::Error::NonFinite`]'s message (eager op errors panic; see the crate docs);
//! - [`crate::function`] traces and compiles a separate, unoptimized graph (one step per
//!   traced op, so a report names that op and its source line rather than a fused loop),
//!   the interpreter checks each step's result in order, and `call` returns
//!   [`crate::Error::NonFinite`] for the first step that produced a non-finite value. Backward
//!   ops carry the source line of the forward op they differentiate.
//!
//! While it is off, nothing is checked: the interpreter tests one flag per step, and
//! functions use their optimized graphs.
//!
//! ```
//! use tapeflow::{debugging, function, Error, Tensor};
//! let f = function(|x: &Tensor| Ok((x * 2.0).sum_all().log()));
//! debugging::enable_check_numerics();
//! let err = f.call(&Tensor::vec(&[-1.0f32])).unwrap_err();
//! debugging::disable_check_numerics();
//! assert!(matches!(err, Error::NonFinite { op: "log", .. }), "{err}");
//! assert!(f.call(&Tensor::vec(&[-1.0f32])).unwrap().to_scalar().unwrap().is_nan());
//! ```

use std::sync::atomic::{AtomicBool, Ordering};

static CHECK_NUMERICS: AtomicBool = AtomicBool::new(false);

/// Turns numerics checks on for the whole process (`tf.debugging.enable_check_numerics`).
///
/// # Panics
/// Not itself; but while checks are on, an eager op whose result holds a NaN or an
/// infinity panics with the message of [`crate::Error::NonFinite`].
pub fn enable_check_numerics() {
    CHECK_NUMERICS.store(true, Ordering::Relaxed);
}

/// Turns numerics checks off (the default).
pub fn disable_check_numerics() {
    CHECK_NUMERICS.store(false, Ordering::Relaxed);
}

/// Whether numerics checks are on.
pub fn check_numerics_enabled() -> bool {
    CHECK_NUMERICS.load(Ordering::Relaxed)
}
