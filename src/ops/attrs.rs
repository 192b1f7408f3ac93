//! Small Copy attribute types (axis sets, permutations) and the text attribute map.

use std::collections::BTreeMap;

/// A set of axes as a bit mask (axes below [`AxisSet::LIMIT`]). `Copy`, `Eq` and `Hash`,
/// so ops stay `Copy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct AxisSet(pub u16);

impl AxisSet {
    /// Axes must be below this (reductions work on the first 16 axes).
    pub const LIMIT: usize = 16;

    /// The set of the given axes, or a message naming the first axis that does not fit.
    pub fn try_of(axes: &[usize]) -> Result<AxisSet, String> {
        let mut m = 0u16;
        for &a in axes {
            if a >= Self::LIMIT {
                return Err(format!(
                    "axis {a} is out of range (reductions take axes below {})",
                    Self::LIMIT
                ));
            }
            m |= 1 << a;
        }
        Ok(AxisSet(m))
    }

    /// The set of the given axes.
    ///
    /// # Panics
    /// If an axis is not below [`AxisSet::LIMIT`] (use [`AxisSet::try_of`] for untrusted axes).
    pub fn of(axes: &[usize]) -> AxisSet {
        Self::try_of(axes).unwrap_or_else(|e| panic!("AxisSet::of: {e}"))
    }

    /// All axes `0..rank` (those below [`AxisSet::LIMIT`]).
    pub fn all(rank: usize) -> AxisSet {
        AxisSet(((1u32 << rank.min(Self::LIMIT)) - 1) as u16)
    }
    /// Whether `axis` is in the set.
    pub fn contains(self, axis: usize) -> bool {
        axis < 16 && self.0 & (1 << axis) != 0
    }
    /// The axes in increasing order.
    pub fn to_vec(self) -> Vec<usize> {
        (0..16).filter(|&a| self.contains(a)).collect()
    }
}

/// A permutation of up to 8 axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Perm {
    /// Number of axes.
    pub rank: u8,
    /// `perm[i]` = the input axis that becomes output axis `i`.
    pub perm: [u8; 8],
}

impl Perm {
    /// A permutation from a slice; `None` if it is not one or too long.
    pub fn new(p: &[usize]) -> Option<Perm> {
        if p.len() > 8 {
            return None;
        }
        let mut seen = [false; 8];
        let mut perm = [0u8; 8];
        for (i, &a) in p.iter().enumerate() {
            if a >= p.len() || seen[a] {
                return None;
            }
            seen[a] = true;
            perm[i] = a as u8;
        }
        Some(Perm {
            rank: p.len() as u8,
            perm,
        })
    }
    /// As a vector.
    pub fn to_vec(self) -> Vec<usize> {
        self.perm[..self.rank as usize]
            .iter()
            .map(|&a| a as usize)
            .collect()
    }
    /// The inverse permutation.
    pub fn inverse(self) -> Perm {
        let mut inv = [0u8; 8];
        for i in 0..self.rank as usize {
            inv[self.perm[i] as usize] = i as u8;
        }
        Perm {
            rank: self.rank,
            perm: inv,
        }
    }
}

/// Parsed `key=value` attributes of one IR line.
pub type AttrMap = BTreeMap<String, String>;

/// Formats a list as `[1,0,2]`.
pub fn list(v: &[usize]) -> String {
    format!(
        "[{}]",
        v.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// Parses `[1,0,2]`.
pub fn parse_list(s: &str) -> Result<Vec<usize>, String> {
    let inner = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| format!("expected a list like [1,2], got `{s}`"))?;
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    inner
        .split(',')
        .map(|t| {
            t.trim()
                .parse::<usize>()
                .map_err(|e| format!("bad integer `{t}`: {e}"))
        })
        .collect()
}

/// Looks up a required attribute.
pub fn get<'a>(m: &'a AttrMap, k: &str) -> Result<&'a str, String> {
    m.get(k)
        .map(|s| s.as_str())
        .ok_or_else(|| format!("missing attribute `{k}`"))
}

/// Looks up a required integer attribute.
pub fn get_usize(m: &AttrMap, k: &str) -> Result<usize, String> {
    get(m, k)?
        .parse()
        .map_err(|e| format!("attribute `{k}`: {e}"))
}

/// Looks up a required axis attribute (stored as `u8`).
pub fn get_u8(m: &AttrMap, k: &str) -> Result<u8, String> {
    to_u8(k, get_usize(m, k)?)
}

/// Looks up a required offset or length attribute (stored as `u32`).
pub fn get_u32(m: &AttrMap, k: &str) -> Result<u32, String> {
    to_u32(k, get_usize(m, k)?)
}

/// An axis, stride or window attribute narrowed to its stored `u8`, or a message naming
/// `what` and the value (never a silent truncation: `256` is not axis 0).
pub fn to_u8(what: &str, v: usize) -> Result<u8, String> {
    u8::try_from(v).map_err(|_| format!("{what} {v} is out of range (at most {})", u8::MAX))
}

/// An offset or length attribute narrowed to its stored `u32`, or a message naming
/// `what` and the value.
pub fn to_u32(what: &str, v: usize) -> Result<u32, String> {
    u32::try_from(v).map_err(|_| format!("{what} {v} is out of range (at most {})", u32::MAX))
}
