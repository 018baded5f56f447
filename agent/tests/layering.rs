//! The agent's top-level modules depend on each other in one direction only (the layers are
//! listed below and explained in `agent/README.md`). This test reads `agent/src`, collects which
//! top-level module refers to which (`crate::<module>`, `crate::{<module>, …}`, and `super::`
//! paths that climb to the crate root), and fails on a cycle, naming it, and on any reference to
//! a module of the same or a higher layer, naming the file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// From the bottom up: a module may use modules of lower layers only. `main` is the crate root.
const LAYERS: &[&[&str]] = &[
    &["util", "sys", "logs", "testns"],
    &["config", "alloc"],
    &[
        "eviction", "imagegc", "network", "manifest", "services", "netpol",
    ],
    &["pod", "overlay", "dns", "proxy"],
    &["cluster", "metrics", "stream"],
    &["server", "cli"],
    &["main"],
];

/// One reference from a file to a top-level module (or to the crate root, `main`).
#[derive(Debug, Clone, PartialEq)]
struct Ref {
    target: String,
    line: usize,
}

/// Tokens of Rust source that matter for paths: identifiers, `::`, `{`, `}`, `,`, `;`, `*`, `$`,
/// each with its line; comments, strings and character literals are skipped.
fn tokens(src: &str) -> Vec<(String, usize)> {
    let b: Vec<char> = src.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(b[i] == '\n');
                    i += 1;
                }
            }
        } else if c == 'r'
            && matches!(next, Some('"' | '#'))
            && (i == 0 || !ident(b[i - 1]) || b[i - 1] == 'b')
        {
            // A raw string: r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (1..=hashes).all(|k| b.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                line += usize::from(b[j] == '\n');
                j += 1;
            }
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                line += usize::from(b.get(i) == Some(&'\n'));
                i += 1;
            }
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{1F}'); otherwise a lifetime.
            if next == Some('\\') {
                i += 2;
                while i < b.len() && b[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if ident(c) {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            out.push((b[start..i].iter().collect(), line));
        } else if c == ':' && next == Some(':') {
            out.push(("::".into(), line));
            i += 2;
        } else {
            if matches!(c, '{' | '}' | ',' | ';' | '$' | '*') {
                out.push((c.to_string(), line));
            }
            i += 1;
        }
    }
    out
}

/// The first segments of a path at `t[i..]`: one identifier (or a glob), or each item of a
/// `{…}` group; `self` names nothing new.
fn first_segments(t: &[(String, usize)], i: usize) -> Vec<(String, usize)> {
    let segment =
        |s: &str| s == "*" || s != "self" && s.starts_with(|c: char| c.is_alphabetic() || c == '_');
    match t.get(i) {
        Some((s, _)) if s == "{" => {
            let mut out = Vec::new();
            let mut depth = 0;
            let mut expect = true;
            for (s, l) in &t[i..] {
                match s.as_str() {
                    "{" => {
                        depth += 1;
                        expect = depth == 1;
                    }
                    "}" => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    "," if depth == 1 => expect = true,
                    _ if expect && depth == 1 => {
                        if segment(s) {
                            out.push((s.clone(), *l));
                        }
                        expect = false;
                    }
                    _ => {}
                }
            }
            out
        }
        Some((s, line)) if segment(s) => vec![(s.clone(), *line)],
        _ => Vec::new(),
    }
}

/// What a file at module depth `depth` (1 for `x.rs` and `x/mod.rs`, 2 for `x/y.rs`…) refers
/// to at the crate root: `crate::` paths, and `super::` chains that climb to the root (an
/// inline `mod tests { … }` is one level deeper).
fn root_refs(src: &str, depth: usize) -> Vec<Ref> {
    let t = tokens(src);
    let mut out = Vec::new();
    // Brace depth, and the brace depths at which inline modules opened.
    let (mut braces, mut inline): (usize, Vec<usize>) = (0, Vec::new());
    let mut i = 0;
    while i < t.len() {
        let tok = t[i].0.as_str();
        let after_dollar = i > 0 && t[i - 1].0 == "$";
        let is_path_start = i == 0 || t[i - 1].0 != "::";
        if tok == "{" {
            if i >= 2 && t[i - 2].0 == "mod" {
                inline.push(braces);
            }
            braces += 1;
            i += 1;
        } else if tok == "}" {
            braces = braces.saturating_sub(1);
            if inline.last() == Some(&braces) {
                inline.pop();
            }
            i += 1;
        } else if tok == "crate" && !after_dollar && t.get(i + 1).is_some_and(|n| n.0 == "::") {
            out.extend(first_segments(&t, i + 2));
            i += 2;
        } else if tok == "super" && is_path_start {
            let mut j = i;
            let mut climbs = 0;
            while t.get(j).is_some_and(|s| s.0 == "super")
                && t.get(j + 1).is_some_and(|s| s.0 == "::")
            {
                climbs += 1;
                j += 2;
            }
            if climbs == depth + inline.len() {
                out.extend(first_segments(&t, j));
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out.into_iter()
        .map(|(target, line)| Ref { target, line })
        .collect()
}

/// The modules `mod name;` declares in the crate root.
fn declared_modules(main_rs: &str) -> Vec<String> {
    let t = tokens(main_rs);
    t.windows(3)
        .filter(|w| w[0].0 == "mod" && w[2].0 == ";")
        .map(|w| w[1].0.clone())
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Module depth of a file below `src`: `x.rs`, `x/mod.rs` → 1; `x/y.rs`, `x/y/mod.rs` → 2.
fn depth(rel: &Path) -> usize {
    let parts = rel.components().count();
    if rel.file_name().is_some_and(|f| f == "mod.rs") {
        parts - 1
    } else {
        parts
    }
}

/// Edges between top-level modules: (from, to) → where the first reference is.
type Edges = BTreeMap<(String, String), String>;

fn edges(src: &Path) -> (Vec<String>, Edges) {
    let main_rs = std::fs::read_to_string(src.join("main.rs")).expect("reading main.rs");
    let modules = declared_modules(&main_rs);
    let mut edges = Edges::new();
    for m in &modules {
        edges.insert(("main".into(), m.clone()), "main.rs (mod)".into());
    }
    for m in &modules {
        let mut files = Vec::new();
        let file = src.join(format!("{m}.rs"));
        if file.exists() {
            files.push(file);
        }
        let dir = src.join(m);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
        assert!(!files.is_empty(), "module {m} has no source file");
        for f in files {
            let rel = f.strip_prefix(src).expect("below src").to_path_buf();
            let text = std::fs::read_to_string(&f).expect("reading a source file");
            for r in root_refs(&text, depth(&rel)) {
                let to = if modules.contains(&r.target) {
                    r.target
                } else {
                    // An item of the crate root itself.
                    "main".to_string()
                };
                if &to != m {
                    edges
                        .entry((m.clone(), to))
                        .or_insert_with(|| format!("{}:{}", rel.display(), r.line));
                }
            }
        }
    }
    (modules, edges)
}

/// A cycle of the graph, as the modules along it (the first repeated at the end), if any.
fn find_cycle(edges: &Edges) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        next.entry(a).or_default().push(b);
    }
    // 0 unvisited, 1 on the current path, 2 done.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        n: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(n, 1);
        path.push(n);
        for &m in next.get(n).into_iter().flatten() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|p| *p == m).expect("on the path");
                    let mut cycle: Vec<String> =
                        path[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(m.to_string());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, next, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n, 2);
        None
    }
    let nodes: BTreeSet<&str> = edges
        .keys()
        .flat_map(|(a, b)| [a.as_str(), b.as_str()])
        .collect();
    for n in nodes {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, &next, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn layer_of(m: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&m))
}

#[test]
fn modules_depend_on_lower_layers_only_and_never_in_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (modules, edges) = edges(&src);
    let listed: BTreeSet<&str> = LAYERS.iter().flat_map(|l| l.iter().copied()).collect();
    for m in &modules {
        assert!(
            listed.contains(m.as_str()),
            "module {m} is in no layer: add it to LAYERS in agent/tests/layering.rs and to agent/README.md"
        );
    }
    for m in &listed {
        assert!(
            *m == "main" || modules.iter().any(|d| d == m),
            "LAYERS names {m}, which main.rs does not declare"
        );
    }
    if let Some(cycle) = find_cycle(&edges) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| {
                format!(
                    "  {} -> {} ({})",
                    w[0],
                    w[1],
                    edges[&(w[0].clone(), w[1].clone())]
                )
            })
            .collect();
        panic!(
            "the agent's modules form a cycle: {}\n{}",
            cycle.join(" -> "),
            steps.join("\n")
        );
    }
    let upward: Vec<String> = edges
        .iter()
        .filter(|((a, b), _)| layer_of(b) >= layer_of(a))
        .map(|((a, b), at)| format!("  {a} -> {b} ({at})"))
        .collect();
    assert!(
        upward.is_empty(),
        "modules refer to modules of their own or a higher layer (see agent/README.md):\n{}",
        upward.join("\n")
    );
}

#[test]
fn references_are_read_from_code_only() {
    let src = r##"
        use crate::{self, config::Config, util, pod::{self, Services}};
        use super::admission::Refusal;
        use super::super::network::Network;
        // crate::cluster in a comment
        /* crate::server /* nested */ crate::stream */
        let s = "crate::metrics";
        let r = r#"crate::cli "quoted""#;
        let c = '"'; let l: &'static str = "x";
        macro_rules! m { () => { $crate::logs::x() } }
        fn f() { crate::eviction::run(); }
        mod tests { use super::*; use super::super::manifest; }
    "##;
    let targets = |depth| {
        root_refs(src, depth)
            .into_iter()
            .map(|r| r.target)
            .collect::<Vec<_>>()
    };
    assert_eq!(targets(3), ["config", "util", "pod", "eviction"]);
    assert_eq!(targets(2), ["config", "util", "pod", "network", "eviction"]);
    assert_eq!(
        targets(1),
        ["config", "util", "pod", "admission", "eviction", "manifest"]
    );
    assert_eq!(
        root_refs("\n\nuse crate::pod;", 1),
        [Ref {
            target: "pod".into(),
            line: 3
        }]
    );
    assert_eq!(depth(Path::new("pod/mod.rs")), 1);
    assert_eq!(depth(Path::new("pod/worker/sandbox.rs")), 3);
    assert_eq!(
        declared_modules("mod a;\npub mod b;\n#[cfg(test)]\nmod tests {}\n"),
        ["a", "b"]
    );
}

#[test]
fn a_back_edge_is_a_named_cycle() {
    let e = |pairs: &[(&str, &str)]| -> Edges {
        pairs
            .iter()
            .map(|(a, b)| ((a.to_string(), b.to_string()), String::new()))
            .collect()
    };
    assert_eq!(
        find_cycle(&e(&[("pod", "config"), ("cluster", "pod")])),
        None
    );
    assert_eq!(
        find_cycle(&e(&[
            ("pod", "config"),
            ("cluster", "pod"),
            ("config", "cluster")
        ])),
        Some(vec![
            "cluster".to_string(),
            "pod".into(),
            "config".into(),
            "cluster".into()
        ])
    );
}
