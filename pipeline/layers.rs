//! The import directions of the library, checked over its source (tests only).
//!
//! Owns the one list of layers, in the order data flows: infrastructure, the audit
//! trail, contracts as data, the extract stages, the extract driver, the output checks,
//! the TRE service from its records up to its pages, and tools. A module may use
//! (`crate::<module>`) only modules of its own layer or an earlier one, and the graph of
//! top-level modules has no circle. A new top-level module fails the test until it is
//! placed in [`LAYERS`]. It reads source files only; it never builds or runs anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, earliest first; the README's "Where things are" map follows them.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "infrastructure",
        &[
            "clock",
            "digest",
            "durable",
            "error",
            "ordered",
            "trusted_file",
        ],
    ),
    ("audit trail", &["audit"]),
    // `policy` names the Type 1 codelist, which `optout` owns and loads.
    (
        "contracts as data",
        &["schema", "nhs_number", "optout", "policy", "manifest"],
    ),
    (
        "extract stages",
        &[
            "quarantine",
            "ingest",
            "transform",
            "hmac_sha256",
            "pseudonym",
            "key_file",
            "output",
            "udf",
        ],
    ),
    ("extract driver", &["extract"]),
    ("output checks", &["disclosure", "lineage"]),
    ("TRE records", &["tre"]),
    ("TRE jobs and client", &["jobs", "client"]),
    ("TRE API", &["server"]),
    ("TRE pages", &["web"]),
    ("tools", &["generate"]),
];

/// Modules only the commands use (the layers alone would allow more): the research
/// environment and the output checks read an extract only through its manifest
/// (`manifest`), never through the extract driver.
const USED_ONLY_BY_COMMANDS: &[&str] = &["extract"];

/// The top-level module a source file belongs to (`None` for the crate root, this
/// test-only module, and the bin-only `main.rs` and `cmd/`).
fn module_of(root: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(root).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" | "cmd" | "layers.rs" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the source folder") {
        let path = entry.expect("a folder entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules named as `crate::<module>` in code (not comments) before the file's
/// `#[cfg(test)]` part.
fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        // Code before a comment (a `//` after a space; `http://` inside a string stays).
        let line = line.split(" //").next().unwrap_or_default();
        if line.starts_with("//") {
            continue;
        }
        for (i, _) in line.match_indices("crate::") {
            let rest = &line[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let before = line[..i].chars().last();
            let is_path = before.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
            if is_path && !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// Module -> the other modules it uses, over the whole library.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&root, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let used: Vec<String> = uses(&text).into_iter().filter(|m| *m != module).collect();
        graph.entry(module).or_default().extend(used);
    }
    graph
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, ms)| ms.contains(&module))
}

/// A circle through `start`, if there is one.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((m, path)) = stack.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if next == start {
                return Some([path.clone(), vec![next.clone()]].concat());
            }
            if seen.insert(next.clone()) {
                stack.push((next.clone(), [path.clone(), vec![next.clone()]].concat()));
            }
        }
    }
    None
}

#[test]
fn every_module_has_a_layer() {
    let unplaced: Vec<String> = import_graph()
        .into_keys()
        .filter(|m| layer_of(m).is_none())
        .collect();
    assert!(
        unplaced.is_empty(),
        "place these modules in pipeline/layers.rs LAYERS: {unplaced:?}"
    );
}

#[test]
fn no_module_uses_a_later_layer() {
    let mut wrong = Vec::new();
    for (module, used) in import_graph() {
        let Some(own) = layer_of(&module) else {
            continue;
        };
        for u in used {
            if let Some(l) = layer_of(&u).filter(|l| *l > own) {
                wrong.push(format!(
                    "{module} ({}) uses {u} ({})",
                    LAYERS[own].0, LAYERS[l].0
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the flow: {wrong:#?}");
}

#[test]
fn the_extract_driver_is_used_by_no_one() {
    let wrong: Vec<String> = import_graph()
        .into_iter()
        .flat_map(|(module, used)| {
            used.into_iter()
                .filter(|u| USED_ONLY_BY_COMMANDS.contains(&u.as_str()))
                .map(move |u| format!("{module} uses {u}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "use the extract's manifest through crate::manifest: {wrong:#?}"
    );
}

#[test]
fn no_import_circle() {
    let graph = import_graph();
    let circles: Vec<String> = graph
        .keys()
        .filter_map(|m| circle(&graph, m))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(circles.is_empty(), "import circles: {circles:#?}");
}

#[test]
fn the_checker_sees_uses_and_circles() {
    let text = "//! see crate::web\nuse crate::digest::sha256_hex;\nlet x = crate::durable::Mode::Shared; // crate::jobs\nfoo_crate::bar();\n#[cfg(test)]\nuse crate::tre;\n";
    let found: Vec<String> = uses(text).into_iter().collect();
    assert_eq!(found, ["digest", "durable"]);
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
    .collect();
    assert_eq!(
        circle(&graph, "a").map(|c| c.join(" -> ")),
        Some("a -> b -> c -> a".to_string())
    );
    assert_eq!(circle(&graph, "d"), None);
}
