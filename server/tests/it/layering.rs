//! The house rule: inside every crate of the workspace, modules depend on each other one way.
//! Sibling modules (children of the same parent) form a graph through their `crate::…` and
//! `super::…` paths; that graph must have no circle. A parent and its own children may use
//! each other (a module root declares the trait its children implement). Paths through the
//! crate root's re-exports (`crate::Error`) are refused too: they hide which module an item
//! comes from, and so hide circles.
//!
//! Comments, string literals and `#[cfg(test)] mod tests` blocks are not read.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside its crate (`[]` is the crate root).
type ModPath = Vec<String>;

/// One use of another module: where, and what.
#[derive(Debug, Clone)]
struct Reference {
    file: PathBuf,
    line: usize,
    target: ModPath,
}

/// The crates of the workspace: every folder with a Cargo.toml and a src/ folder.
fn crate_sources(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        if dir.join("Cargo.toml").is_file() && dir.join("src").is_dir() {
            out.push(dir.join("src"));
        }
        if depth >= 3 {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir()
                && !name.starts_with('.')
                && !matches!(name.as_str(), "target" | "node_modules" | "src" | "tests")
            {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    out.sort();
    out
}

/// Every `.rs` file under `src` with its module path.
fn module_files(src: &Path) -> Vec<(ModPath, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let mut parts: ModPath = rel
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            let last = parts.pop().unwrap();
            let stem = last.trim_end_matches(".rs");
            if !matches!(stem, "mod" | "lib" | "main") || !parts.is_empty() && stem != "mod" {
                parts.push(stem.to_owned());
            }
            out.push((parts, path));
        }
    }
    out.sort();
    out
}

/// The code of a file without comments, string and char literals, and its test module (each
/// removed character becomes a space, so line numbers stay).
fn code_only(text: &str) -> String {
    let cut = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    let b: Vec<char> = text[..cut].chars().collect();
    let mut out = String::with_capacity(b.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !(b[i - 1].is_alphanumeric() || b[i - 1] == '_'))
        {
            // A raw string r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|h| b.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &ch in &b[i..j.min(b.len())] {
                out.push(blank(ch));
            }
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && next == Some('\\') {
            // '\n', '\'', '\u{..}'
            let mut j = i + 2;
            while j < b.len() && b[j] != '\'' {
                j += 1;
            }
            for _ in i..=j.min(b.len() - 1) {
                out.push(' ');
            }
            i = j + 1;
        } else if c == '\'' && b.get(i + 2) == Some(&'\'') {
            out.push_str("   ");
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The paths of a `crate::`/`super::` path expression starting at `i`, with use-groups
/// expanded: `crate::a::{b, c::d}` gives `a::b` and `a::c::d`.
fn parse_tree(s: &[char], mut i: usize, prefix: &ModPath, out: &mut Vec<ModPath>) -> usize {
    let mut path = prefix.clone();
    loop {
        while s.get(i).is_some_and(|c| c.is_whitespace()) {
            i += 1;
        }
        if s.get(i) == Some(&'{') {
            i += 1;
            loop {
                while s.get(i).is_some_and(|c| c.is_whitespace() || *c == ',') {
                    i += 1;
                }
                if s.get(i).is_none_or(|c| *c == '}') {
                    return i + 1;
                }
                i = parse_tree(s, i, &path, out);
            }
        }
        let start = i;
        while s.get(i).is_some_and(|c| is_ident(*c)) {
            i += 1;
        }
        let ident: String = s[start..i].iter().collect();
        match ident.as_str() {
            "" | "self" => {}
            "super" => {
                path.pop();
            }
            _ => path.push(ident),
        }
        let mut j = i;
        while s.get(j).is_some_and(|c| c.is_whitespace()) {
            j += 1;
        }
        if s.get(j) == Some(&':') && s.get(j + 1) == Some(&':') {
            i = j + 2;
            continue;
        }
        out.push(path);
        return i;
    }
}

/// Every module path `file` (module `at`) names, with its line.
fn references_in(code: &str, at: &ModPath) -> Vec<(usize, ModPath)> {
    let s: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < s.len() {
        if s[i] == '\n' {
            line += 1;
        }
        let boundary = i == 0 || !(is_ident(s[i - 1]) || s[i - 1] == ':');
        let word = |w: &str| {
            w.chars().enumerate().all(|(k, c)| s.get(i + k) == Some(&c))
                && s.get(i + w.len()) == Some(&':')
                && s.get(i + w.len() + 1) == Some(&':')
        };
        if boundary && (word("crate") || word("super")) {
            let base: ModPath = if word("crate") {
                Vec::new()
            } else {
                let mut b = at.clone();
                b.pop();
                b
            };
            let mut paths = Vec::new();
            // Past `crate::` or `super::` (seven characters either way).
            let end = parse_tree(&s, i + 7, &base, &mut paths);
            for p in paths {
                out.push((line, p));
            }
            for &c in &s[i..end.min(s.len())] {
                if c == '\n' {
                    line += 1;
                }
            }
            i = end;
            continue;
        }
        i += 1;
    }
    out
}

/// The names the crate root re-exports (`pub use a::B;`, `pub use a::{B, C};`).
fn root_reexports(src: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for root in ["lib.rs", "main.rs"] {
        let Ok(text) = std::fs::read_to_string(src.join(root)) else {
            continue;
        };
        let code = code_only(&text);
        for stmt in code.split(';') {
            let stmt = stmt.trim();
            let Some(rest) = stmt.strip_prefix("pub use ") else {
                continue;
            };
            let names = match (rest.find('{'), rest.rfind('}')) {
                (Some(a), Some(b)) => rest[a + 1..b].to_owned(),
                _ => rest.rsplit("::").next().unwrap_or_default().to_owned(),
            };
            for n in names.split(',') {
                let n = n.trim();
                // `X as Y` exports Y.
                let n = n.rsplit(" as ").next().unwrap_or(n).trim();
                if !n.is_empty() && n != "*" {
                    out.insert(n.to_owned());
                }
            }
        }
    }
    out
}

/// What is wrong with one crate's module graph: circles between siblings, and paths through
/// the crate root's re-exports.
fn problems(src: &Path) -> Vec<String> {
    let files = module_files(src);
    let known: BTreeSet<ModPath> = files.iter().map(|(m, _)| m.clone()).collect();
    let reexports = root_reexports(src);
    let mut refs: Vec<(ModPath, Reference)> = Vec::new();
    for (module, file) in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (line, path) in references_in(&code_only(&text), module) {
            // The module named: the longest prefix of the path that is a module.
            let target = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| known.contains(p))
                .unwrap_or_default();
            refs.push((
                module.clone(),
                Reference {
                    file: file.clone(),
                    line,
                    target: if target.is_empty() && !path.is_empty() {
                        // An item of the crate root: remembered as such.
                        vec![format!("<root item {}>", path.join("::"))]
                    } else {
                        target
                    },
                },
            ));
        }
    }
    let mut out = Vec::new();
    // parent → (child → (child → first reference))
    let mut graphs: BTreeMap<ModPath, BTreeMap<String, BTreeMap<String, Reference>>> =
        BTreeMap::new();
    for (from, r) in refs {
        if let Some(item) = r.target.first().filter(|t| t.starts_with("<root item")) {
            let name = item
                .trim_start_matches("<root item ")
                .trim_end_matches('>')
                .split("::")
                .next()
                .unwrap_or_default();
            if from.is_empty() || !reexports.contains(name) {
                continue; // an item the crate root defines itself
            }
            out.push(format!(
                "{}:{}: {item}: name the module it comes from (crate::module::Item)",
                r.file.display(),
                r.line
            ));
            continue;
        }
        let common = from
            .iter()
            .zip(&r.target)
            .take_while(|(a, b)| a == b)
            .count();
        if common == from.len() || common == r.target.len() {
            continue; // a module and its ancestor
        }
        graphs
            .entry(from[..common].to_vec())
            .or_default()
            .entry(from[common].clone())
            .or_default()
            .entry(r.target[common].clone())
            .or_insert(r);
    }
    for (parent, graph) in &graphs {
        for cycle in circles(graph) {
            let mut text = format!(
                "a circle between the modules of `{}`:",
                if parent.is_empty() {
                    "crate".to_owned()
                } else {
                    parent.join("::")
                }
            );
            for w in cycle.windows(2) {
                let r = &graph[&w[0]][&w[1]];
                text += &format!(
                    "\n    {} -> {} ({}:{})",
                    w[0],
                    w[1],
                    r.file.display(),
                    r.line
                );
            }
            out.push(text);
        }
    }
    out
}

/// One circle through each strongly connected group of more than one node (or a node that
/// names itself), as a closed walk `[a, b, …, a]`.
fn circles(graph: &BTreeMap<String, BTreeMap<String, Reference>>) -> Vec<Vec<String>> {
    let reaches = |from: &str, to: &str| -> Option<Vec<String>> {
        // Breadth-first search for a path from `from` to `to`.
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([from.to_owned()]);
        let mut seen = BTreeSet::from([from.to_owned()]);
        while let Some(n) = queue.pop_front() {
            for next in graph.get(&n).into_iter().flat_map(|m| m.keys()) {
                if next == to {
                    let mut path = vec![to.to_owned(), n.clone()];
                    let mut cur = n.clone();
                    while let Some(p) = prev.get(&cur) {
                        path.push(p.clone());
                        cur = p.clone();
                    }
                    path.reverse();
                    return Some(path);
                }
                if seen.insert(next.clone()) {
                    prev.insert(next.clone(), n.clone());
                    queue.push_back(next.clone());
                }
            }
        }
        None
    };
    let mut out = Vec::new();
    let mut covered: BTreeSet<String> = BTreeSet::new();
    for node in graph.keys() {
        if covered.contains(node) {
            continue;
        }
        if let Some(path) = reaches(node, node) {
            covered.extend(path.iter().cloned());
            out.push(path);
        }
    }
    out
}

#[test]
fn no_module_circles_in_the_workspace() {
    // Another tree can be checked with DEEP_RECALL_LAYERING_ROOT=DIR.
    let root = std::env::var_os("DEEP_RECALL_LAYERING_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap()
                .to_path_buf()
        });
    let crates = crate_sources(&root);
    assert!(
        crates.iter().any(|c| c.ends_with("core/src")) && crates.len() >= 3,
        "found {crates:?}"
    );
    let mut all = Vec::new();
    for src in crates {
        all.extend(problems(&src));
    }
    assert!(all.is_empty(), "{}", all.join("\n"));
}

#[test]
fn the_check_finds_circles_and_root_paths() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("store")).unwrap();
    let write = |p: &str, t: &str| std::fs::write(src.join(p), t).unwrap();
    write(
        "lib.rs",
        "pub mod engine;\npub mod store;\npub mod events;\npub use error::Error;\n",
    );
    write(
        "engine.rs",
        "use crate::store::{self, MemoryStore};\n// use crate::nothing::Here;\n",
    );
    write("store.rs", "mod sql;\npub trait MemoryStore {}\n");
    write(
        "store/sql.rs",
        "use super::MemoryStore;\nfn f() { let _ = \"crate::engine::x\"; crate::events::publish(); }\n",
    );
    write(
        "events.rs",
        "fn f() -> crate::Error { todo!() }\n#[cfg(test)]\nmod tests {\n    use crate::store::X;\n}\n",
    );
    // No circle yet: engine → store → events; one root path.
    let found = problems(src);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].contains("events.rs:1: <root item Error>"),
        "{found:#?}"
    );

    write(
        "events.rs",
        "use crate::{engine::Engine, error};\nfn f() -> error::Error { todo!() }\n",
    );
    std::fs::write(src.join("error.rs"), "pub struct Error;\n").unwrap();
    let found = problems(src);
    assert_eq!(found.len(), 1, "{found:#?}");
    let circle = &found[0];
    assert!(
        circle.contains("a circle between the modules of `crate`"),
        "{circle}"
    );
    for edge in ["engine -> store", "store -> events", "events -> engine"] {
        assert!(circle.contains(edge), "{circle}");
    }
    assert!(circle.contains("sql.rs:2"), "{circle}");
}
