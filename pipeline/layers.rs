//! The import directions of the library, checked over its source (tests only).
//!
//! Owns the one list of layers, in the order data flows: infrastructure, the audit
//! trail, contracts as data, the extract stages, the extract driver, the output checks,
//! the TRE service from its records up to its pages, and tools. A module may use
//! (`crate::<module>`) only modules of its own layer or an earlier one, and the graph of
//! top-level modules has no circle. A new top-level module fails the test until it is
//! placed in [`LAYERS`]. The two adapters of the TRE, the JSON API (`server`) and the
//! pages (`web`), sit above its action library (`tre::actions`) and never use each other
//! ([`ADAPTERS`]). It reads source files only; it never builds or runs anything.

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
            "intern",
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
    ("scale-out", &["cluster"]),
    ("extract driver", &["extract"]),
    ("output checks", &["disclosure", "received", "lineage"]),
    ("TRE records", &["tre"]),
    // The register and the alerts read TRE records; the API and pages serve them.
    ("TRE transparency", &["transparency"]),
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

/// The code of a source file that the library is built from: comments removed, and
/// every `#[cfg(test)]` item left out (a single item, or a whole `mod tests { .. }`
/// block, wherever it stands); string and character literals are kept as they are.
fn library_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            // Skip the item the attribute applies to: up to its `;` or its closing brace.
            let mut depth = 0i64;
            let mut opened = false;
            let rest = trimmed.trim_start_matches("#[cfg(test)]").to_string();
            let mut item = if rest.trim().is_empty() {
                lines.next().map(str::to_string).unwrap_or_default()
            } else {
                rest
            };
            loop {
                let code = strip_comment(&item);
                for c in code_chars(&code) {
                    match c {
                        '{' => {
                            depth += 1;
                            opened = true;
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                let ends = if opened {
                    depth <= 0
                } else {
                    code.trim_end().ends_with(';')
                };
                if ends {
                    break;
                }
                match lines.next() {
                    Some(l) => item = l.to_string(),
                    None => break,
                }
            }
            continue;
        }
        out.push_str(&strip_comment(line));
        out.push('\n');
    }
    out
}

/// A line without its `//` comment (a `//` inside a string, like `http://`, stays).
fn strip_comment(line: &str) -> String {
    let mut in_str = false;
    let mut escaped = false;
    let bytes: Vec<char> = line.chars().collect();
    for i in 0..bytes.len() {
        let c = bytes[i];
        if in_str {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        if c == '"' {
            in_str = true;
        } else if c == '/' && bytes.get(i + 1) == Some(&'/') {
            return bytes[..i].iter().collect();
        }
    }
    line.to_string()
}

/// The characters of code outside string and character literals.
fn code_chars(code: &str) -> Vec<char> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut in_str = false;
    while i < chars.len() {
        let c = chars[i];
        if in_str {
            if c == '\\' {
                i += 1;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i += 2; // a character literal such as '{'
        } else {
            out.push(c);
        }
        i += 1;
    }
    out
}

/// The first path segments named after `prefix` (such as `crate::` or `super::`) in
/// `code`: `prefix a::b` gives `a`, and `prefix {a::B, b, c::{..}}` gives `a`, `b`, `c`.
fn segments_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = BTreeSet::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().last();
        if before.is_some_and(|c| is_ident(c) || c == ':') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group, each's first segment.
            let mut depth = 0;
            let mut item_start = true;
            let mut name = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && is_ident(c) => name.push(c),
                    c if item_start && c.is_whitespace() && name.is_empty() => {}
                    _ => {
                        if item_start && !name.is_empty() {
                            found.insert(std::mem::take(&mut name));
                        }
                        item_start = false;
                    }
                }
                if item_start && c == ',' && !name.is_empty() {
                    found.insert(std::mem::take(&mut name));
                }
            }
            if !name.is_empty() {
                found.insert(name);
            }
        } else {
            let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found.remove("self");
    found
}

/// The modules named as `crate::<module>` (or in a `crate::{..}` group) in the
/// library's code of a file: comments and `#[cfg(test)]` items left out.
fn uses(text: &str) -> BTreeSet<String> {
    segments_after(&library_code(text), "crate::")
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

/// What the two adapters (the JSON API in `server/`, the pages in `web/`) may reach of the
/// TRE: its action library (`crate::tre::actions`), and, in the server's start-up file
/// only, what opening the workspace and finishing a previous process's actions needs.
/// Neither adapter uses the other, and neither reaches the job runner except to start it.
const ADAPTERS: &[(&str, &[&str], &[&str])] = &[
    // (file, the `crate::tre::` modules it may use, the top-level modules it must not)
    ("web/", &["actions"], &["server", "jobs"]),
    (
        "server/mod.rs",
        &["actions", "auditor", "workspace", "recover", "release"],
        &["web"],
    ),
    ("server/", &["actions"], &["web", "jobs"]),
];

/// The adapter rules a file of the library breaks.
fn adapter_findings(rel: &str, code: &str) -> Vec<String> {
    let Some((_, tre_ok, never)) = ADAPTERS.iter().find(|(f, _, _)| rel.starts_with(f)) else {
        return Vec::new();
    };
    let mut wrong = Vec::new();
    for m in segments_after(code, "crate::tre::") {
        if !tre_ok.contains(&m.as_str()) {
            wrong.push(format!(
                "{rel} uses crate::tre::{m} (reach it through crate::tre::actions)"
            ));
        }
    }
    for m in segments_after(code, "crate::") {
        if never.contains(&m.as_str()) {
            wrong.push(format!("{rel} uses crate::{m}"));
        }
    }
    wrong
}

#[test]
fn web_and_server_reach_the_tre_only_through_its_actions_and_never_each_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let Ok(rel) = file.strip_prefix(&root) else {
            continue;
        };
        let rel = rel.to_string_lossy().replace('\\', "/");
        let code = library_code(&std::fs::read_to_string(&file).expect("read a source file"));
        wrong.extend(adapter_findings(&rel, &code));
    }
    assert!(
        wrong.is_empty(),
        "adapters past the action library: {wrong:#?}"
    );
    let graph = import_graph();
    for (a, b) in [("web", "server"), ("server", "web")] {
        assert!(
            !graph.get(a).is_some_and(|u| u.contains(b)),
            "{a} must not use {b}"
        );
    }
    assert!(graph.get("web").is_some_and(|u| u.contains("tre")));
    assert!(graph.get("server").is_some_and(|u| u.contains("tre")));
}

#[test]
fn the_adapter_rule_sees_a_handler_call_and_a_record_write() {
    let web = "use crate::server::jobs;\nuse crate::tre::{actions, release::save};\n";
    assert_eq!(
        adapter_findings("web/jobs.rs", web),
        [
            "web/jobs.rs uses crate::tre::release (reach it through crate::tre::actions)",
            "web/jobs.rs uses crate::server",
        ]
    );
    let start = "use crate::tre::recover;\nuse crate::jobs::runner;\n";
    assert!(adapter_findings("server/mod.rs", start).is_empty());
    assert_eq!(adapter_findings("server/jobs.rs", start).len(), 2);
    assert!(adapter_findings("tre/actions/jobs.rs", web).is_empty());
}

/// For each folder module, file -> the sibling files it uses (`super::x`, or
/// `crate::<folder>::x`); `mod.rs`, which declares them all, is left out.
fn folder_graphs() -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut graphs: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in files {
        let Ok(rel) = file.strip_prefix(&root) else {
            continue;
        };
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let [folder, name] = &parts[..] else {
            continue;
        };
        if name == "mod.rs" || folder == "cmd" {
            continue;
        }
        let me = name.trim_end_matches(".rs").to_string();
        let code = library_code(&std::fs::read_to_string(&file).expect("read a source file"));
        let mut used = segments_after(&code, "super::");
        used.extend(segments_after(&code, &format!("crate::{folder}::")));
        let siblings: BTreeSet<String> = std::fs::read_dir(root.join(folder))
            .expect("read a folder")
            .flatten()
            .map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .collect();
        used.retain(|u| *u != me && siblings.contains(u));
        graphs.entry(folder.clone()).or_default().insert(me, used);
    }
    graphs
}

#[test]
fn no_import_circle_inside_a_folder() {
    let mut circles = Vec::new();
    for (folder, graph) in folder_graphs() {
        for m in graph.keys() {
            if let Some(c) = circle(&graph, m) {
                circles.push(format!("{folder}/: {}", c.join(" -> ")));
            }
        }
    }
    assert!(circles.is_empty(), "import circles: {circles:#?}");
}

#[test]
fn the_checker_sees_uses_and_circles() {
    let text = "//! see crate::web\nuse crate::digest::sha256_hex;\nlet x = crate::durable::Mode::Shared; // crate::jobs\nfoo_crate::bar();\n#[cfg(test)]\nuse crate::tre;\nuse crate::{\n    audit::{A, B},\n    clock,\n};\n#[cfg(test)]\nmod tests {\n    use crate::web;\n    let s = \"{\";\n}\nuse crate::{ordered, error::E};\n";
    let found: Vec<String> = uses(text).into_iter().collect();
    assert_eq!(
        found,
        ["audit", "clock", "digest", "durable", "error", "ordered"]
    );
    assert_eq!(
        segments_after("use super::{head::{A, B}, error};", "super::"),
        ["error", "head"].iter().map(|s| s.to_string()).collect()
    );
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
