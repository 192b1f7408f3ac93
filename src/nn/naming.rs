//! Process-wide unique names (`dense`, `dense_1`, ...) and the global seed that
//! default initializers derive their seeds from.
//!
//! Keras numbers layers per name prefix across the whole session; so do we. A layer's
//! name is assigned the first time it is asked for (usually when it joins a model), so a
//! single-threaded program gets the same names, and therefore the same initial weights,
//! on every run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

static COUNTERS: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);
static GLOBAL_SEED: AtomicU64 = AtomicU64::new(0x5eed_7a9e_f10e);

/// The next unique name for `prefix`: `prefix`, then `prefix_1`, `prefix_2`, ...
///
/// ```
/// let a = tapeflow::nn::unique_name("my_block");
/// let b = tapeflow::nn::unique_name("my_block");
/// assert_ne!(a, b);
/// assert!(b.starts_with("my_block_"));
/// ```
pub fn unique_name(prefix: &str) -> String {
    let mut guard = COUNTERS.lock().expect("name counters poisoned");
    let counters = guard.get_or_insert_with(HashMap::new);
    let n = counters.entry(prefix.to_string()).or_insert(0);
    let name = if *n == 0 {
        prefix.to_string()
    } else {
        format!("{prefix}_{n}")
    };
    *n += 1;
    name
}

/// Sets the global seed (`tf.random.set_seed`): initializers and dropout layers without
/// an explicit seed derive theirs from it and from their variable's name.
pub fn set_seed(seed: u64) {
    GLOBAL_SEED.store(seed, Ordering::Relaxed);
}

/// A seed for `name` derived from the global seed (FNV-1a of the name, mixed).
pub(crate) fn derived_seed(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix(h ^ GLOBAL_SEED.load(Ordering::Relaxed))
}

/// One round of SplitMix64 (a good 64-bit mixer).
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
