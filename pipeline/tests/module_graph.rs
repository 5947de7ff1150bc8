//! Keeps the dependencies between `ferry-pipeline`'s top-level modules
//! pointing one way (value → event → … → runtime → bus, as DESIGN.md's
//! layout asks): a module cycle makes every module in it depend on all the
//! others, so none can be read, tested or moved alone.
//!
//! A module is a top-level file or folder of `pipeline/src`; an edge A → B
//! is a `crate::B` path (or `crate::{…, B, …}` group) in A's non-test code:
//! text after a file's first `#[cfg(test)]` and `//` comments (so rustdoc
//! links too) are ignored. The same rules as the shared
//! `tools/modcycles.py`, so that both agree on what a cycle is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read pipeline/src") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to; `None` for the crate root.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).expect("file under src");
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// The code of a file that counts: before its first `#[cfg(test)]`, with
/// `//` comments (line, doc and inner doc) removed.
fn production_code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|line| line.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first path segments after every `crate::` in `code`, including
/// each top-level member of a `crate::{a, b::c, d::{e, f}}` group.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut expect_ident = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => expect_ident = true,
                    c if c.is_whitespace() => {}
                    _ if expect_ident && depth == 0 => {
                        out.push(ident_at(&group[i..]).to_string());
                        expect_ident = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident_at(rest).to_string());
        }
    }
    out
}

fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph = Graph::new();
    let mut code_of = Vec::new();
    for file in files {
        if let Some(module) = module_of(src, &file) {
            graph.entry(module.clone()).or_default();
            let text = std::fs::read_to_string(&file).expect("read a source file");
            code_of.push((module, production_code(&text)));
        }
    }
    for (module, code) in code_of {
        for target in crate_paths(&code) {
            if target != module && graph.contains_key(&target) {
                graph.get_mut(&module).expect("module").insert(target);
            }
        }
    }
    graph
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        next: usize,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in &s.graph[v] {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().expect("on the stack");
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        next: 0,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn top_level_modules_have_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(graph.len() > 10, "found only {graph:?} under {src:?}");
    let found = cycles(&graph);
    let report: Vec<String> = found
        .iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    graph[a]
                        .iter()
                        .filter(|b| c.contains(b))
                        .map(move |b| format!("{a}->{b}"))
                })
                .collect();
            format!(
                "cycle of {}: {}; edges: {}",
                c.len(),
                c.join(", "),
                edges.join(" ")
            )
        })
        .collect();
    assert!(
        found.is_empty(),
        "module cycles in pipeline/src (break each back-edge: move the item \
         down or pass the value in):\n{}",
        report.join("\n")
    );
}

#[test]
fn reads_paths_groups_and_skips_comments_and_tests() {
    let code = production_code(
        "use crate::event::Row;\n\
         use crate::{batch, dlq::Parked, value::{self, Value}, FastHashMap};\n\
         // crate::runtime in a comment\n\
         /// [`crate::sink::Sink`] in rustdoc\n\
         fn f() { crate::clock::now_micros(); }\n\
         #[cfg(test)]\n\
         mod tests { use crate::config::Config; }\n",
    );
    assert_eq!(
        crate_paths(&code),
        ["event", "batch", "dlq", "value", "FastHashMap", "clock"]
    );
}

#[test]
fn finds_a_cycle_and_only_it() {
    let graph: Graph = [
        ("a", &["b"][..]),
        ("b", &["c"][..]),
        ("c", &["a", "d"][..]),
        ("d", &[][..]),
    ]
    .into_iter()
    .map(|(m, to)| (m.to_string(), to.iter().map(|t| t.to_string()).collect()))
    .collect();
    assert_eq!(cycles(&graph), [["a", "b", "c"]]);
}
