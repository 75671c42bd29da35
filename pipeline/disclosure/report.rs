//! Rendering a [`Report`] for people: terminal text, Markdown or HTML for the output checker.
//! (JSON is the serde form of [`Report`].) This module only formats; it decides nothing.

use std::fmt::Write;

use super::{Finding, Report, Verdict};

/// A human-readable format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Plain text for a terminal.
    Text,
    /// Markdown.
    Markdown,
    /// A self-contained HTML page.
    Html,
}

fn verdict_line(r: &Report) -> String {
    match r.verdict {
        Verdict::Releasable => "RELEASABLE: the table may be released as it is.".to_string(),
        Verdict::NotReleasable
            if r.findings
                .iter()
                .any(|f| f.rule == super::Rule::Unprotected) =>
        {
            format!(
                "NOT RELEASABLE: {} failing cells, and some hidden cells cannot be protected; `--apply` refuses: combine categories and check again.",
                r.findings.len()
            )
        }
        Verdict::NotReleasable => format!(
            "NOT RELEASABLE as it is: {} failing cells{}; `tre check --apply OUT` writes a safe version.",
            r.findings.len(),
            match r.table_findings.iter().filter(|f| f.fails).count() {
                0 => String::new(),
                n => format!(" and {n} table-level findings"),
            }
        ),
        Verdict::Blocked => {
            "BLOCKED: the table looks like row-level data and may not leave the TRE.".to_string()
        }
    }
}

fn cell_text(f: &Finding) -> String {
    let row = f
        .row
        .map(|r| format!("row {r}"))
        .unwrap_or_else(|| "(total not in table)".into());
    let key = if f.key.is_empty() {
        String::new()
    } else {
        format!(" [{}]", f.key.join(", "))
    };
    let value = f.value.map(|v| format!(" = {v}")).unwrap_or_default();
    format!("{row}{key} {}{value}", f.column)
}

/// One line per value column: cells and value hidden against the lower bound.
fn loss_lines(r: &Report) -> Vec<String> {
    r.loss
        .iter()
        .map(|l| {
            let bound = match (l.lower_bound_cells, l.lower_bound_value) {
                (Some(c), Some(v)) => {
                    format!("at least {c} cells and {v} value ({})", l.bound_method)
                }
                _ => "no bound".to_string(),
            };
            format!(
                "{}: {} cells hidden ({} primary), value {}; any protecting pattern hides {bound}",
                l.column, l.hidden_cells, l.primary_cells, l.hidden_value
            )
        })
        .collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn md(s: &str) -> String {
    s.replace('|', "\\|")
}

pub(super) fn render(r: &Report, format: Format) -> String {
    let mut o = String::new();
    let roles: Vec<String> = r
        .roles
        .columns
        .iter()
        .map(|c| format!("{} = {} ({})", c.name, c.role, c.how))
        .collect();
    let summary: Vec<String> = r.summary.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    match format {
        Format::Text => text(&mut o, r, &roles, &summary),
        Format::Markdown => markdown(&mut o, r, &summary),
        Format::Html => html(&mut o, r),
    }
    o
}

fn text(o: &mut String, r: &Report, roles: &[String], summary: &[String]) {
    let _ = writeln!(o, "{}", verdict_line(r));
    let _ = writeln!(o, "rules: {} ({})", r.rules.name, r.rules.source);
    let _ = writeln!(o, "rows checked: {}", r.rows);
    let _ = writeln!(o, "columns:");
    for l in roles {
        let _ = writeln!(o, "  {l}");
    }
    let _ = writeln!(
        o,
        "margins: {} ({})",
        r.roles.margins_present, r.roles.margins_how
    );
    if !summary.is_empty() {
        let _ = writeln!(o, "failing cells by rule: {}", summary.join(", "));
    }
    for f in &r.table_findings {
        let _ = writeln!(
            o,
            "{} {}: {}",
            if f.fails { "FAIL" } else { "note" },
            f.rule,
            f.reason
        );
    }
    for f in &r.findings {
        let _ = writeln!(
            o,
            "{:<12} {:<8} {}: {}",
            f.rule,
            f.action,
            cell_text(f),
            f.reason
        );
    }
    let _ = writeln!(o, "information loss:");
    for l in loss_lines(r) {
        let _ = writeln!(o, "  {l}");
    }
    let _ = writeln!(o, "attacker model:");
    for m in &r.attacker_model {
        let _ = writeln!(o, "  {m}");
    }
    let _ = writeln!(o, "method:");
    for m in &r.method {
        let _ = writeln!(o, "  {m}");
    }
}

fn markdown(o: &mut String, r: &Report, summary: &[String]) {
    let _ = writeln!(o, "# Output check: {}\n", verdict_line(r));
    let _ = writeln!(o, "- Rules: `{}`: {}", r.rules.name, md(&r.rules.source));
    let _ = writeln!(o, "- Rows checked: {}", r.rows);
    let _ = writeln!(
        o,
        "- Margins: {} ({})",
        r.roles.margins_present, r.roles.margins_how
    );
    if !summary.is_empty() {
        let _ = writeln!(o, "- Failing cells by rule: {}", summary.join(", "));
    }
    let _ = writeln!(o, "\n## Columns\n\n| column | role | how |\n|---|---|---|");
    for c in &r.roles.columns {
        let _ = writeln!(o, "| {} | {} | {} |", md(&c.name), c.role, md(&c.how));
    }
    if !r.table_findings.is_empty() {
        let _ = writeln!(o, "\n## Table findings\n");
        for f in &r.table_findings {
            let _ = writeln!(
                o,
                "- **{}** {}: {}",
                if f.fails { "FAIL" } else { "note" },
                f.rule,
                md(&f.reason)
            );
        }
    }
    if !r.findings.is_empty() {
        let _ = writeln!(
            o,
            "\n## Failing cells\n\n| rule | action | row | key | column | value | reason |\n|---|---|---|---|---|---|---|"
        );
        for f in &r.findings {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} |",
                f.rule,
                f.action,
                f.row.map(|x| x.to_string()).unwrap_or_default(),
                md(&f.key.join(", ")),
                md(&f.column),
                f.value.map(|v| v.to_string()).unwrap_or_default(),
                md(&f.reason)
            );
        }
    }
    let _ = writeln!(o, "\n## Information loss\n");
    for l in loss_lines(r) {
        let _ = writeln!(o, "- {}", md(&l));
    }
    let _ = writeln!(o, "\n## Attacker model\n");
    for m in &r.attacker_model {
        let _ = writeln!(o, "- {}", md(m));
    }
    let _ = writeln!(o, "\n## Method\n");
    for m in &r.method {
        let _ = writeln!(o, "- {}", md(m));
    }
}

fn html(o: &mut String, r: &Report) {
    let _ = writeln!(
        o,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Output check</title><style>body{{font-family:sans-serif}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:2px 6px}}.fail{{color:#a00}}</style></head><body>"
    );
    let _ = writeln!(
        o,
        "<h1 class=\"{}\">{}</h1>",
        if r.releasable() { "ok" } else { "fail" },
        esc(&verdict_line(r))
    );
    let _ = writeln!(
        o,
        "<p>Rules: <code>{}</code>: {}<br>Rows checked: {}<br>Margins: {} ({})</p>",
        esc(&r.rules.name),
        esc(&r.rules.source),
        r.rows,
        r.roles.margins_present,
        esc(&r.roles.margins_how)
    );
    let _ = writeln!(
        o,
        "<h2>Columns</h2><table><tr><th>column</th><th>role</th><th>how</th></tr>"
    );
    for c in &r.roles.columns {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.name),
            esc(&c.role),
            esc(&c.how)
        );
    }
    let _ = writeln!(o, "</table>");
    if !r.table_findings.is_empty() {
        let _ = writeln!(o, "<h2>Table findings</h2><ul>");
        for f in &r.table_findings {
            let _ = writeln!(
                o,
                "<li class=\"{}\"><b>{}</b>: {}</li>",
                if f.fails { "fail" } else { "note" },
                esc(f.rule.as_str()),
                esc(&f.reason)
            );
        }
        let _ = writeln!(o, "</ul>");
    }
    if !r.findings.is_empty() {
        let _ = writeln!(
            o,
            "<h2>Failing cells</h2><table><tr><th>rule</th><th>action</th><th>row</th><th>key</th><th>column</th><th>value</th><th>reason</th></tr>"
        );
        for f in &r.findings {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(f.rule.as_str()),
                esc(&f.action.to_string()),
                f.row.map(|x| x.to_string()).unwrap_or_default(),
                esc(&f.key.join(", ")),
                esc(&f.column),
                f.value.map(|v| v.to_string()).unwrap_or_default(),
                esc(&f.reason)
            );
        }
        let _ = writeln!(o, "</table>");
    }
    let _ = writeln!(o, "<h2>Attacker model</h2><ul>");
    for m in r.attacker_model.iter().chain(loss_lines(r).iter()) {
        let _ = writeln!(o, "<li>{}</li>", esc(m));
    }
    let _ = writeln!(o, "</ul>");
    let _ = writeln!(o, "<h2>Method</h2><ul>");
    for m in &r.method {
        let _ = writeln!(o, "<li>{}</li>", esc(m));
    }
    let _ = writeln!(o, "</ul></body></html>");
}
