//! The module layering of `docs/architecture.md` holds in the code: every top-level module of
//! `src/` (and of `simnet/src/`) imports only modules on lower layers of the document's
//! "Dependency order", and no two sibling modules anywhere import each other, directly or round a
//! longer cycle. Imports are read from the source: `use` trees and `crate::`/`super::` paths, test
//! modules (`#[cfg(test)] mod tests`) and comments left out. And no file under `src/` or
//! `simnet/src/` is over 600 lines, no function over 100.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

const DOC: &str = include_str!("../docs/architecture.md");

/// Module path (`["data", "service"]`) → file.
fn modules(root: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    for path in rust_files(root) {
        let rel = path.strip_prefix(root).unwrap().with_extension("");
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts != ["lib"] && parts != ["main"] {
            out.insert(parts, path);
        }
    }
    // Test-only modules (`#[cfg(test)] mod tests;` in their parent's file) are not layering.
    let test_only: Vec<Vec<String>> = out
        .iter()
        .flat_map(|(parent, file)| {
            let text = std::fs::read_to_string(file).unwrap();
            let parent = parent.clone();
            text.split("#[cfg(test)]")
                .skip(1)
                .filter_map(|after| {
                    let decl = after.trim_start().strip_prefix("mod ")?;
                    let name = decl.strip_suffix(';').unwrap_or(decl).split(';').next()?;
                    (!name.contains('{')).then(|| {
                        let mut m = parent.clone();
                        m.push(name.trim().to_owned());
                        m
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for m in test_only {
        out.remove(&m);
    }
    out
}

/// The source without comments and without a trailing `#[cfg(test)] mod tests`.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Splits `a, b::{c, d}, e` at top-level commas.
fn split_top(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, ch) in s.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Every path a `use` tree names, as segments.
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let mut base = prefix.to_vec();
        base.extend(
            tree[..open]
                .split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
        let Some(close) = tree.rfind('}') else { return };
        let inner = &tree[open + 1..close];
        for part in split_top(inner) {
            expand(&base, part, out);
        }
    } else {
        let name = tree.split(" as ").next().unwrap();
        let mut path = prefix.to_vec();
        path.extend(name.split("::").map(|s| s.trim().to_owned()));
        out.push(path);
    }
}

/// Paths (absolute within the crate) that the module `module` refers to.
fn references(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    // `use` declarations start a line (after `pub`, `pub(crate)` …) and end at the next `;`.
    let mut offset = 0;
    for line in code.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let decl = trimmed
            .strip_prefix("pub ")
            .or_else(|| {
                trimmed
                    .split_once(") ")
                    .map(|(_, r)| r)
                    .filter(|_| trimmed.starts_with("pub("))
            })
            .unwrap_or(trimmed);
        if let Some(tree) = decl.strip_prefix("use ") {
            let start = offset + (line.len() - tree.len());
            if let Some(end) = code[start..].find(';') {
                expand(&[], &code[start..start + end], &mut paths);
            }
        }
        offset += line.len();
    }
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        for (i, _) in code.match_indices(start) {
            if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b':') {
                continue;
            }
            let end = code[i..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| i + e);
            paths.push(
                code[i..end]
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            );
        }
    }
    paths
        .into_iter()
        .filter_map(|p| {
            let mut abs: Vec<String> = match p.first().map(String::as_str) {
                Some("crate") => Vec::new(),
                Some("super") => module.to_vec(),
                Some("self") => {
                    let mut m = module.to_vec();
                    m.push(String::new());
                    m
                }
                _ => return None,
            };
            let mut segs = p
                .iter()
                .skip(if p[0] == "crate" { 1 } else { 0 })
                .peekable();
            while segs.peek().is_some_and(|s| *s == "super" || *s == "self") {
                if segs.next().unwrap() == "super" {
                    abs.pop();
                }
            }
            if abs.last().is_some_and(String::is_empty) {
                abs.pop();
            }
            abs.extend(segs.cloned());
            Some(abs)
        })
        .collect()
}

/// Imports between siblings: (importer, imported) at the level below their common ancestor.
fn sibling_edges(root: &Path) -> BTreeSet<(Vec<String>, Vec<String>)> {
    let mods = modules(root);
    let mut edges = BTreeSet::new();
    for (module, file) in &mods {
        for path in references(module, &code(file)) {
            let Some(target) = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| mods.contains_key(p))
            else {
                continue;
            };
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.len() || common == target.len() {
                continue; // an ancestor or a descendant
            }
            edges.insert((module[..=common].to_vec(), target[..=common].to_vec()));
        }
    }
    edges
}

/// A cycle among the edges, if any (depth-first search).
fn cycle(edges: &BTreeSet<(Vec<String>, Vec<String>)>) -> Option<Vec<String>> {
    let mut graph: BTreeMap<&Vec<String>, Vec<&Vec<String>>> = BTreeMap::new();
    for (a, b) in edges {
        graph.entry(a).or_default().push(b);
    }
    fn visit<'a>(
        n: &'a Vec<String>,
        graph: &BTreeMap<&'a Vec<String>, Vec<&'a Vec<String>>>,
        stack: &mut Vec<&'a Vec<String>>,
        done: &mut BTreeSet<&'a Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| *s == n) {
            let mut c: Vec<String> = stack[i..].iter().map(|m| m.join("::")).collect();
            c.push(n.join("::"));
            return Some(c);
        }
        if !done.insert(n) {
            return None;
        }
        stack.push(n);
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, &graph, &mut Vec::new(), &mut done))
}

/// The layers the document lists between `<!-- layers:NAME -->` and `<!-- /layers -->`: one
/// numbered line per layer, its modules in backticks before the dash.
fn layers(name: &str) -> BTreeMap<String, usize> {
    let start = format!("<!-- layers:{name} -->");
    let body = DOC
        .split_once(&start)
        .unwrap_or_else(|| panic!("docs/architecture.md has no {start} list"))
        .1
        .split_once("<!-- /layers -->")
        .expect("the layer list ends")
        .0;
    let mut out = BTreeMap::new();
    for (layer, line) in body.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let head = line.split(" — ").next().unwrap();
        for (i, part) in head.split('`').enumerate() {
            if i % 2 == 1 {
                out.insert(part.to_owned(), layer);
            }
        }
    }
    out
}

fn check(root: &str, name: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(root);
    let edges = sibling_edges(&root);
    assert!(
        !edges.is_empty(),
        "no imports found under {}",
        root.display()
    );
    if let Some(c) = cycle(&edges) {
        panic!(
            "modules under {} import each other: {}",
            root.display(),
            c.join(" → ")
        );
    }
    let layer = layers(name);
    let top: BTreeSet<String> = modules(&root)
        .into_keys()
        .filter(|m| m.len() == 1)
        .map(|m| m[0].clone())
        .collect();
    for m in &top {
        assert!(
            layer.contains_key(m),
            "docs/architecture.md does not place `{m}` ({name}) in the dependency order"
        );
    }
    let mut wrong = Vec::new();
    for (a, b) in edges.iter().filter(|(a, _)| a.len() == 1) {
        let (la, lb) = (layer[&a[0]], layer[&b[0]]);
        if lb >= la {
            wrong.push(format!(
                "`{}` (layer {la}) imports `{}` (layer {lb})",
                a[0], b[0]
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against docs/architecture.md's dependency order ({name}):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_node_library_follows_the_documented_dependency_order() {
    check("src", "src");
}

#[test]
fn simnet_follows_the_documented_dependency_order() {
    check("simnet/src", "simnet");
}

#[test]
fn the_checker_sees_a_cycle_and_a_layer_violation() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("a.rs"), "mod x;\nmod y;\nuse crate::b::Thing;\n").unwrap();
    std::fs::write(src.join("a/x.rs"), "use super::y::Y;\n").unwrap();
    std::fs::write(
        src.join("a/y.rs"),
        "use super::{x::{self, X}};\n// use crate::c;\n",
    )
    .unwrap();
    std::fs::write(src.join("b.rs"), "pub fn f() { crate::a::g() }\n").unwrap();
    let edges = sibling_edges(src);
    let has = |a: &[&str], b: &[&str]| {
        edges.contains(&(
            a.iter().map(|s| s.to_string()).collect(),
            b.iter().map(|s| s.to_string()).collect(),
        ))
    };
    assert!(has(&["a"], &["b"]) && has(&["b"], &["a"]));
    assert!(has(&["a", "x"], &["a", "y"]) && has(&["a", "y"], &["a", "x"]));
    assert_eq!(edges.len(), 4, "comments are not imports: {edges:?}");
    assert!(cycle(&edges).is_some());
}

/// Files longer than this are split by idea (`docs/architecture.md`).
const MAX_FILE_LINES: usize = 600;
/// Functions longer than this are split into named steps.
const MAX_FN_LINES: usize = 100;

/// Every `.rs` file under `root`, sorted.
fn rust_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Functions (name, first line, length in lines) of a file: from the `fn` line to the `}` at the
/// same indentation.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let mut rest = trimmed;
        for prefix in [
            "pub(crate) ",
            "pub(super) ",
            "pub ",
            "const ",
            "async ",
            "unsafe ",
        ] {
            rest = rest.strip_prefix(prefix).unwrap_or(rest);
            rest = rest.strip_prefix(prefix).unwrap_or(rest);
        }
        let Some(name) = rest.strip_prefix("fn ") else {
            continue;
        };
        if line.trim_end().ends_with(';') {
            continue; // a declaration without a body
        }
        let name: String = name
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let close = " ".repeat(indent) + "}";
        if let Some(end) = lines[i + 1..]
            .iter()
            .position(|l| l.starts_with(&close) && !l[indent..].starts_with("} else"))
        {
            out.push((name, i + 1, end + 2));
        }
    }
    out
}

#[test]
fn no_file_or_function_is_too_long() {
    let mut long = Vec::new();
    for root in ["src", "simnet/src"] {
        for file in rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join(root)) {
            let text = std::fs::read_to_string(&file).unwrap();
            let shown = file
                .strip_prefix(env!("CARGO_MANIFEST_DIR"))
                .unwrap()
                .display()
                .to_string();
            let n = text.lines().count();
            if n > MAX_FILE_LINES {
                long.push(format!("{shown}: {n} lines (at most {MAX_FILE_LINES})"));
            }
            for (name, line, len) in functions(&text) {
                if len > MAX_FN_LINES {
                    long.push(format!(
                        "{shown}:{line}: fn {name} is {len} lines (at most {MAX_FN_LINES})"
                    ));
                }
            }
        }
    }
    assert!(long.is_empty(), "split by idea:\n{}", long.join("\n"));
}

#[test]
fn the_length_check_measures_functions_to_their_closing_brace() {
    let text = "fn short() {\n    1\n}\n\nimpl X {\n    pub async fn long(&self) {\n".to_owned()
        + &"        step();\n".repeat(120)
        + "    }\n}\n";
    let found = functions(&text);
    assert_eq!(found[0], ("short".into(), 1, 3));
    assert_eq!(found[1], ("long".into(), 6, 122));
}
