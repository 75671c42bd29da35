//! The disclosure report in words: the checker's Markdown report rendered as headings,
//! lists, paragraphs and tables (a small subset of Markdown, the subset the report uses).
//!
//! Owns only presentation; the words are the disclosure module's. Everything is escaped
//! by maud, so report text can never become markup.

use maud::{Markup, html};

enum Block {
    Heading(usize, String),
    Item(String),
    Row(Vec<String>),
    Text(String),
}

fn plain(s: &str) -> String {
    s.replace("**", "").replace('`', "")
}

fn blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    for line in md.lines().map(str::trim_end) {
        if line.trim().is_empty() {
            continue;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if hashes > 0 && line[hashes..].starts_with(' ') {
            out.push(Block::Heading(hashes, plain(line[hashes..].trim())));
        } else if let Some(item) = line.trim_start().strip_prefix("- ") {
            out.push(Block::Item(plain(item)));
        } else if line.starts_with('|') {
            let cells: Vec<String> = line
                .trim_matches('|')
                .split('|')
                .map(|c| plain(c.trim()))
                .collect();
            if !cells
                .iter()
                .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
            {
                out.push(Block::Row(cells));
            }
        } else {
            out.push(Block::Text(plain(line)));
        }
    }
    out
}

/// Render the report; report headings start at `<h{level}>`.
pub fn render(md: &str, level: usize) -> Markup {
    let bs = blocks(md);
    let mut parts: Vec<Markup> = Vec::new();
    let mut i = 0;
    while i < bs.len() {
        match &bs[i] {
            Block::Heading(n, t) => {
                let h = (level + n - 1).min(6);
                parts.push(match h {
                    1 | 2 => html! { h2 { (t) } },
                    3 => html! { h3 { (t) } },
                    4 => html! { h4 { (t) } },
                    _ => html! { h5 { (t) } },
                });
                i += 1;
            }
            Block::Text(t) => {
                parts.push(html! { p { (t) } });
                i += 1;
            }
            Block::Item(_) => {
                let start = i;
                while i < bs.len() && matches!(bs[i], Block::Item(_)) {
                    i += 1;
                }
                parts.push(html! { ul { @for b in &bs[start..i] { @if let Block::Item(t) = b { li { (t) } } } } });
            }
            Block::Row(_) => {
                let start = i;
                while i < bs.len() && matches!(bs[i], Block::Row(_)) {
                    i += 1;
                }
                parts.push(rows_table(&bs[start..i]));
            }
        }
    }
    html! { div.report { @for p in parts { (p) } } }
}

fn rows_table(rows: &[Block]) -> Markup {
    let cells: Vec<&Vec<String>> = rows
        .iter()
        .filter_map(|b| if let Block::Row(c) = b { Some(c) } else { None })
        .collect();
    let Some((head, body)) = cells.split_first() else {
        return html! {};
    };
    html! {
        div.scroll { table {
            thead { tr { @for c in head.iter() { th scope="col" { (c) } } } }
            tbody { @for r in body { tr { @for c in r.iter() { td { (c) } } } } }
        } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_markdown_becomes_headings_lists_and_tables() {
        let md = "# Output check: fails\n\n- Rules: `opensafely`\n- Rows checked: 4\n\n## Columns\n\n| column | role |\n|---|---|\n| n | count |\n\nA <b>note</b>.\n";
        let h = render(md, 2).into_string();
        assert!(h.contains("<h2>Output check: fails</h2>"), "{h}");
        assert!(h.contains("<li>Rules: opensafely</li>"), "{h}");
        assert!(h.contains("<h3>Columns</h3>"), "{h}");
        assert!(h.contains("<th scope=\"col\">column</th>"), "{h}");
        assert!(h.contains("<td>count</td>"), "{h}");
        assert!(h.contains("A &lt;b&gt;note&lt;/b&gt;."), "{h}");
    }
}
