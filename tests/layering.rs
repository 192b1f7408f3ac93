//! The module layering of `src/`, checked against the dependency table in the README.
//!
//! The README's "What is there" table says, per module, which modules it may use (the
//! "depends on" column). This test reads that table, then every `crate::` and `super::`
//! path in the code of `src/` (comments and `#[cfg(test)]` modules left out), resolves
//! each to the module it names, and fails on every import the table does not allow,
//! naming the file, the line and the arrow. Rules (also stated under the table):
//! - a file belongs to the longest module of the table that contains it;
//! - a module may use itself, its submodules, `error`, the other modules of its row
//!   and what its row lists; listing a module allows its submodules (`tensor` includes
//!   `tensor::data`);
//! - `crate::Name` for a name re-exported at the crate root is the public API, the
//!   module `crate` of the table (what `nn` and `data` use); `$crate` paths (in macro
//!   bodies) are expanded at the call site and not counted here, and calls of
//!   `#[macro_export]` macros count as uses of the module defining them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// module → allowed modules, read from the README table.
fn table() -> BTreeMap<String, BTreeSet<String>> {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("## What is there")
        .expect("README has a 'What is there' section");
    let mut rows = BTreeMap::new();
    for line in readme[start..].lines().skip(1) {
        if line.starts_with("## ") {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | module | owns | depends on |
        if cells.len() != 5 || cells[1] == "module" || cells[1].starts_with("---") {
            continue;
        }
        let allowed: BTreeSet<String> = ticked(cells[3])
            .into_iter()
            .filter(|m| is_module_name(m))
            .collect();
        // the modules of one row are one layer: they may use each other
        let row = ticked(cells[1]);
        for m in &row {
            let mut a = allowed.clone();
            a.extend(row.iter().cloned());
            rows.insert(m.clone(), a);
        }
    }
    assert!(
        rows.len() >= 10,
        "the README module table has {} rows with a module name: {rows:?}",
        rows.len()
    );
    rows
}

/// The `backticked` words of a table cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn is_module_name(s: &str) -> bool {
    s.split("::")
        .all(|seg| !seg.is_empty() && seg.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file (`src/exec/kernels/ew.rs` → `["exec", "kernels", "ew"]`).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut segs: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if segs.last().is_some_and(|s| s == "mod" || s == "lib") {
        segs.pop();
    }
    segs
}

/// The code of a file without comments and without its `#[cfg(test)]` modules (which
/// close each file by convention).
fn code_of(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        let code = match line.find("//") {
            // a `//` inside a string literal is rare in this crate; keep the line then
            Some(k) if line[..k].matches('"').count() % 2 == 0 => &line[..k],
            _ => line,
        };
        out.push((i + 1, code.to_string()));
    }
    out
}

/// The paths a line names, as absolute module paths (`crate::` and `super::` resolved
/// against `here`, the file's module), each with whether it is a macro call.
fn paths_in(line: &str, here: &[String]) -> Vec<(Vec<String>, bool)> {
    let mut out = Vec::new();
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if !line.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &line[i..];
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let (base, skip): (Vec<String>, usize) = if boundary && rest.starts_with("crate::") {
            if i > 0 && b[i - 1] == b'$' {
                i += 7;
                continue;
            }
            (Vec::new(), 7)
        } else if boundary && rest.starts_with("super::") {
            let mut base = here[..here.len().saturating_sub(1)].to_vec();
            let mut skip = 7;
            while line[i + skip..].starts_with("super::") {
                base.pop();
                skip += 7;
            }
            (base, skip)
        } else {
            i += 1;
            continue;
        };
        i += skip;
        let (segs, len) = segments(&line[i..]);
        i += len;
        let mut p = base.clone();
        p.extend(segs);
        if line[i..].starts_with('{') {
            // a group `{a::b, c}`: each member's leading segments (the prefix alone when
            // the members are on the next lines)
            let end = line[i..].find('}').map_or(line.len(), |e| i + e);
            let mut any = false;
            for member in line[i + 1..end].split(',') {
                let (segs, _) = segments(member.trim());
                if !segs.is_empty() {
                    let mut q = p.clone();
                    q.extend(segs);
                    out.push((q, false));
                    any = true;
                }
            }
            if !any {
                out.push((p, false));
            }
            i = end;
        } else {
            let is_macro = line[i..].starts_with('!');
            out.push((p, is_macro));
        }
    }
    out
}

/// The `a::b::c` segments at the start of `s` and the bytes they take (with a trailing
/// `::` before a group or `*`).
fn segments(s: &str) -> (Vec<String>, usize) {
    let mut segs = Vec::new();
    let mut at = 0;
    loop {
        let rest = &s[at..];
        let n = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if n == 0 {
            break;
        }
        segs.push(rest[..n].to_string());
        at += n;
        if s[at..].starts_with("::") {
            at += 2;
        } else {
            break;
        }
    }
    (segs, at)
}

/// The module of `table` that `path` falls in: the longest row name that is a prefix.
fn unit_of(path: &[String], table: &BTreeMap<String, BTreeSet<String>>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|p| table.contains_key(p))
}

fn allows(allowed: &BTreeSet<String>, unit: &str, target: &str) -> bool {
    let within = |m: &str| target == m || target.starts_with(&format!("{m}::"));
    within(unit) || within("error") || allowed.iter().any(|m| within(m))
}

#[test]
fn every_import_follows_the_readme_dependency_table() {
    let table = table();
    let src = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let modules: BTreeSet<String> = table
        .keys()
        .map(|k| k.split("::").next().unwrap().to_string())
        .collect();
    // the module defining each exported macro
    let mut macros: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &files {
        let text = fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (k, l) in lines.iter().enumerate() {
            let Some(name) = l.trim().strip_prefix("macro_rules! ") else {
                continue;
            };
            let attrs = lines[..k]
                .iter()
                .rev()
                .take_while(|a| a.trim().starts_with("#["));
            if attrs.clone().any(|a| a.trim() == "#[macro_export]") {
                let name = name.trim_end_matches(" {").to_string();
                macros.insert(name, module_of(&src, f));
            }
        }
    }
    let mut bad = Vec::new();
    let mut seen = 0;
    for f in &files {
        let here = module_of(&src, f);
        if here.is_empty() {
            continue; // lib.rs: the root declares modules and re-exports
        }
        let unit = unit_of(&here, &table)
            .unwrap_or_else(|| panic!("{} is in no module of the README table", f.display()));
        let allowed = &table[&unit];
        let text = fs::read_to_string(f).unwrap();
        for (n, line) in code_of(&text) {
            for (path, is_macro) in paths_in(&line, &here) {
                // (an empty path is `crate::{` with the members on the next lines)
                let path = match path.first().and_then(|p| macros.get(p)) {
                    Some(m) if is_macro || path.len() == 1 => m.clone(),
                    _ => path,
                };
                let target = if path.is_empty() || !modules.contains(&path[0]) {
                    "crate".to_string() // a root re-export: the public API
                } else {
                    match unit_of(&path, &table) {
                        Some(t) => t,
                        None => continue, // a root module outside the table (none today)
                    }
                };
                seen += 1;
                if !allows(allowed, &unit, &target) {
                    bad.push(format!(
                        "{}:{n}: {unit} -> {target} (`{}`) is not in the README table",
                        f.strip_prefix(&src).unwrap().display(),
                        path.join("::")
                    ));
                }
            }
        }
    }
    assert!(seen > 100, "only {seen} paths found: the scanner is broken");
    assert!(
        bad.is_empty(),
        "imports against the layers:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_scanner_resolves_paths_and_groups() {
    let here: Vec<String> = ["exec", "fused", "run"].map(String::from).to_vec();
    let got: Vec<String> = paths_in(
        "use crate::tensor::{data::Arr, Float}; use super::accum::new_accum; x($crate::a::B)",
        &here,
    )
    .into_iter()
    .map(|(p, _)| p.join("::"))
    .collect();
    assert_eq!(
        got,
        [
            "tensor::data::Arr",
            "tensor::Float",
            "exec::fused::accum::new_accum"
        ]
    );
    let rows = table();
    assert_eq!(
        unit_of(&["exec", "kernels", "ew"].map(String::from), &rows).as_deref(),
        Some("exec::kernels")
    );
    // the rules the issue asks for, as the README states them
    let kernels = &rows["exec::kernels"];
    for above in [
        "ops", "ir", "passes", "exec", "trace", "autodiff", "nn", "tensor",
    ] {
        assert!(
            !allows(kernels, "exec::kernels", above),
            "kernels -> {above}"
        );
    }
    for above in ["passes", "trace", "autodiff", "nn", "data"] {
        assert!(!allows(&rows["exec"], "exec", above), "exec -> {above}");
    }
    for core in ["tensor", "ops", "ir", "exec", "passes", "trace", "autodiff"] {
        assert!(!allows(&rows["nn"], "nn", core), "nn -> {core}");
        assert!(!allows(&rows["data"], "data", core), "data -> {core}");
    }
}
