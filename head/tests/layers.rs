//! The head's layers as `ARCHITECTURE.md` draws them: the core imports no capability, and no
//! capability imports one that imports it back (directly or through others). Read from the
//! sources, so a new import that breaks the layering fails here, not in review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level modules of `head/src` (a folder or a file) and the others each one names as
/// `crate::<module>` outside its unit tests.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let top = |p: &Path| -> String {
        let rel = p.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
        first.trim_end_matches(".rs").to_string()
    };
    let modules: BTreeSet<String> = files.iter().map(|f| top(f)).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // Unit tests may reach anywhere.
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        let me = top(f);
        let mut uses = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let name: String =
                code[i + "crate::".len()..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            uses.insert(name);
        }
        // `use crate::{a, b::c}`
        for (i, _) in code.match_indices("use crate::{") {
            let group = &code[i + "use crate::{".len()..];
            let group = &group[..group.find("};").unwrap_or(group.len())];
            for part in group.split(',') {
                let name: String = part.trim().chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                uses.insert(name);
            }
        }
        let entry = g.entry(me.clone()).or_default();
        entry.extend(uses.into_iter().filter(|u| *u != me && modules.contains(u)));
    }
    g
}

#[test]
fn the_core_imports_no_capability() {
    let g = imports();
    assert_eq!(g["core"], BTreeSet::new(), "core imports {:?}", g["core"]);
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let g = imports();
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for n in g.get(&m).into_iter().flatten() {
                if seen.insert(n.clone()) {
                    todo.push(n.clone());
                }
            }
        }
        seen
    };
    for (m, uses) in &g {
        for u in uses {
            assert!(!reach(u).contains(m), "{m} imports {u}, which imports {m} back (through {:?})", reach(u));
        }
    }
    // Only the daemon wires capabilities together at the top.
    for (m, uses) in &g {
        if m != "daemon" && m != "main" {
            assert!(!uses.contains("daemon"), "{m} imports the daemon");
        }
    }
}
