//! The import graph of `src/`: which top-level module may use which. Reads `src/**/*.rs`, takes
//! every `crate::<module>` path (and `super::` paths that reach the crate root; `offsite::` in
//! `main.rs`), and fails naming the edge when a module uses one of a higher layer (or, in the
//! consumers' layer, one of its own), and naming the circle when there is one.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Lowest first. A module may use modules of lower layers; within a layer only where the layer
/// allows it (and never in a circle).
const LAYERS: &[(&[&str], bool)] = &[
    // Plumbing every layer may use.
    (&["redact", "naming"], true),
    // Moving bytes: errors, streams and hashes (the lower part of transfer), the sources and
    // the destinations, each behind its trait, and the device handlers (device_fetch's
    // source side).
    (&["transfer", "sources", "destinations", "devices"], true),
    // Configuration: holds each destination kind's own typed settings.
    (&["config", "logging", "addon"], true),
    // The engine: knows no kinds, no destinations, no wiring.
    (&["queue"], false),
    // The one copy loop and its checkpoint: destinations and the engine's job context.
    (&[COPY_LOOP], false),
    // The job kinds.
    (&["jobs"], false),
    // Operator actions and read models.
    (&["ops"], false),
    // What the HTTP side shares: state, errors, access checks, the policy every answer gets.
    (&["http"], false),
    // The consumers: none of them uses another.
    (&["api", "web", "cli", "homeassistant", "metrics"], false),
    // The composition root.
    (&["app"], false),
    (&["main"], false),
];

/// `transfer/copy.rs` and `transfer/checkpoint.rs` sit above the destinations they drive,
/// while the rest of `transfer` sits below them: the check treats them as their own node.
const COPY_LOOP: &str = "transfer::copy";
const COPY_LOOP_FILES: [&str; 2] = ["copy", "checkpoint"];

fn layer_of(module: &str) -> Option<(usize, bool)> {
    LAYERS
        .iter()
        .enumerate()
        .find(|(_, (mods, _))| mods.contains(&module))
        .map(|(i, (_, same))| (i, *same))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments (string literals kept: `#[serde(default = "crate::…")]` is a
/// use too).
fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'r' if matches!(b.get(i + 1), Some(b'"') | Some(b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                // A raw string: r"…", r#"…"#.
                let start = i;
                i += 1;
                let mut hashes = 0;
                while b.get(i) == Some(&b'#') {
                    hashes += 1;
                    i += 1;
                }
                if b.get(i) != Some(&b'"') {
                    out.push_str(&src[start..i]);
                    continue;
                }
                i += 1;
                let close = format!("\"{}", "#".repeat(hashes));
                let end = src[i..]
                    .find(&close)
                    .map_or(b.len(), |e| i + e + close.len());
                out.push_str(&src[start..end]);
                i = end;
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(b.len());
                out.push_str(&src[start..i]);
            }
            b'\'' => {
                // A char literal ('"', '\'', '/') is copied whole; a lifetime is just a quote.
                let len = if b.get(i + 1) == Some(&b'\\') {
                    src[i + 2..].find('\'').map(|e| e + 3)
                } else {
                    src[i + 1..]
                        .chars()
                        .next()
                        .map(|c| c.len_utf8() + 1)
                        .filter(|l| b.get(i + l) == Some(&b'\''))
                        .map(|l| l + 1)
                };
                let len = len.unwrap_or(1);
                out.push_str(&src[i..i + len]);
                i += len;
            }
            _ => {
                let c = src[i..].chars().next().unwrap();
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The first segments of what a path starting right after `prefix::` names: `config` for
/// `config::Secret`, `config` and `queue` for `{config::Config, queue::{…}}`.
fn first_segments(rest: &str) -> Vec<String> {
    let b = rest.as_bytes();
    if b.first() == Some(&b'{') {
        let mut names = Vec::new();
        let mut depth = 0;
        let mut at_start = true;
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'{' => {
                    depth += 1;
                    at_start = depth == 1;
                }
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                b',' if depth == 1 => at_start = true,
                c if at_start && depth == 1 && is_ident(c) => {
                    let end = b[i..]
                        .iter()
                        .position(|c| !is_ident(*c))
                        .map_or(b.len(), |e| i + e);
                    names.push(rest[i..end].to_string());
                    at_start = false;
                    i = end;
                    continue;
                }
                c if c.is_ascii_whitespace() => {}
                _ => at_start = false,
            }
            i += 1;
        }
        names
    } else {
        let end = b.iter().position(|c| !is_ident(*c)).unwrap_or(b.len());
        vec![rest[..end].to_string()]
    }
}

/// Top-level modules `src` (a file of module depth `depth`: 1 for `src/x.rs` and
/// `src/x/mod.rs`) names.
fn uses(src: &str, depth: usize, crate_prefixes: &[&str]) -> BTreeSet<String> {
    let b = src.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        if !src.is_char_boundary(i) || (i > 0 && (is_ident(b[i - 1]) || b[i - 1] == b'$')) {
            i += 1;
            continue;
        }
        let rest = &src[i..];
        if let Some(p) = crate_prefixes
            .iter()
            .find(|p| rest.starts_with(&format!("{p}::")))
        {
            let path = &rest[p.len() + 2..];
            out.extend(first_segments(path));
            if let Some(inner) = path.strip_prefix("transfer::")
                && first_segments(inner)
                    .iter()
                    .any(|s| COPY_LOOP_FILES.contains(&s.as_str()))
            {
                out.insert(COPY_LOOP.to_string());
            }
            i += p.len() + 2;
        } else if rest.starts_with("super::") {
            let mut n = 0;
            let mut tail = rest;
            while let Some(t) = tail.strip_prefix("super::") {
                n += 1;
                tail = t;
            }
            if n >= depth {
                out.extend(first_segments(tail));
            }
            i += rest.len() - tail.len();
        } else {
            i += 1;
        }
    }
    out
}

/// A circle in `graph`, if any, as the modules in order with the first repeated at the end.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node.as_str())
            && let Some(c) = visit(node, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// Top-level module → the top-level modules it uses.
fn module_graph(src_dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src_dir, &mut files);
    let mut modules = BTreeSet::new();
    let node_of = |rel: &Path| -> String {
        let parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        if parts.len() == 2
            && parts[0] == "transfer"
            && COPY_LOOP_FILES.contains(&parts[1].as_str())
        {
            return COPY_LOOP.to_string();
        }
        parts[0].clone()
    };
    for f in &files {
        modules.insert(node_of(f.strip_prefix(src_dir).unwrap()));
    }
    modules.remove("lib");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(src_dir).unwrap();
        let parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let top = node_of(rel);
        if top == "lib" {
            continue;
        }
        let last = parts.last().unwrap();
        let depth = parts.len() - usize::from(last == "mod.rs");
        let prefixes: &[&str] = if top == "main" {
            &["offsite"]
        } else {
            &["crate"]
        };
        let text = std::fs::read_to_string(f).unwrap();
        let used = uses(&strip_comments(&text), depth, prefixes);
        let entry = graph.entry(top.clone()).or_default();
        entry.extend(
            used.into_iter()
                .filter(|m| modules.contains(m) && *m != top),
        );
    }
    graph
}

/// Every rule `graph` breaks, in words.
fn violations(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    for (from, tos) in graph {
        let Some((lf, _)) = layer_of(from) else {
            problems.push(format!(
                "module {from} has no layer: add it to LAYERS in tests/it/layers.rs"
            ));
            continue;
        };
        for to in tos {
            let Some((lt, same_ok)) = layer_of(to) else {
                continue;
            };
            if lt > lf {
                problems.push(format!(
                    "{from} (layer {lf}) uses {to} (layer {lt}): a lower layer may not use a higher one"
                ));
            } else if lt == lf && !same_ok {
                problems.push(format!(
                    "{from} uses {to}: modules of layer {lf} may not use each other"
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(graph) {
        problems.push(format!("import circle: {}", cycle.join(" → ")));
    }
    problems
}

#[test]
fn modules_use_only_lower_layers_and_form_no_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    let problems = violations(&graph);
    assert!(
        problems.is_empty(),
        "the module graph breaks the layering:\n  {}\n\ngraph:\n{}",
        problems.join("\n  "),
        graph
            .iter()
            .map(|(m, u)| format!(
                "  {m} → {}",
                u.iter().cloned().collect::<Vec<_>>().join(", ")
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_check_sees_uses_and_circles() {
    let text = strip_comments(
        "use crate::{config::Config, queue::{self, Store}};\n\
         // crate::app::X in a comment is no use\n\
         let s = \"http://x\"; let c = '\"'; fn f<'a>() {}\n\
         #[serde(default = \"crate::jobs::f\")]\n\
         use super::super::web::page;\n",
    );
    let used = uses(&text, 2, &["crate"]);
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        ["config", "jobs", "queue", "web"]
    );
    // The copy loop is a node of its own, above the destinations it drives.
    let used = uses(
        "use crate::transfer::{copy::Copy, TransferError};\nuse crate::transfer::ByteStream;",
        1,
        &["crate"],
    );
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        ["transfer", "transfer::copy"]
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("destinations", vec!["transfer::copy"]),
        ("queue", vec!["app"]),
        ("app", vec!["queue"]),
        ("api", vec!["web"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    let problems = violations(&graph);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("queue (layer ") && p.contains(" uses app"))
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("api uses web: modules of layer ")
                && p.ends_with(" may not use each other"))
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("import circle: app → queue → app"))
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("destinations (layer ") && p.contains(" uses transfer::copy"))
    );
}
