#!/usr/bin/env python3
"""List library functions longer than a limit (default 80 lines), longest first.

Counts the lines from a function's first line (`fn` or its `pub`/`async` prefix) to
its closing brace, comments and blank lines included, by brace depth over the source
with strings, chars and comments masked. Skips `#[cfg(test)]` modules and
`pipeline/cmd/` (bin-only). Usage: .ci/long-functions.py [LIMIT] [ROOT]
Exit status: 0 always (a list to read, not a gate).
"""
import os
import re
import sys

MOD = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{")
FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def mask(text):
    """Blank out comments, string and char literals, keeping newlines and length."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = '"' + hashes
            j = text.find(end, i + 2 + len(hashes))
            j = n if j < 0 else j + len(end)
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == "'" and re.match(r"'(\\.|[^\\'])'|'\\u\{[0-9a-fA-F]+\}'|'\\x..'", text[i:i + 12]):
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\x..|\\.|[^\\'])'", text[i:])
            out.append(" " * len(m.group(0)))
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def functions(path):
    """Yield (name, first line, line count) of each function outside test modules."""
    lines = mask(open(path, encoding="utf-8").read()).split("\n")
    depth = 0
    cfg_test = False  # the next item is under #[cfg(test)]
    skip_at = None  # depth of the test module being skipped
    open_fns = []  # (name, first line, depth of its body's brace)
    pending = None  # a fn signature whose body has not opened yet
    for no, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("#[cfg(test)]"):
            cfg_test = True
            continue
        if stripped and not stripped.startswith("#"):
            if cfg_test and MOD.match(line) and skip_at is None:
                skip_at = depth
            cfg_test = False
        m = FN.match(line)
        if m and skip_at is None and pending is None:
            pending = (m.group(6), no)
        for ch in line:
            if ch == "{":
                if pending is not None:
                    open_fns.append((pending[0], pending[1], depth))
                    pending = None
                depth += 1
            elif ch == "}":
                depth -= 1
                if open_fns and open_fns[-1][2] == depth:
                    name, start, _ = open_fns.pop()
                    yield name, start, no - start + 1
                if skip_at is not None and depth == skip_at:
                    skip_at = None
            elif ch == ";" and pending is not None:
                pending = None  # a declaration without a body (a trait's method)


def main():
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 80
    root = sys.argv[2] if len(sys.argv) > 2 else "pipeline"
    found = []
    for d, _, files in os.walk(root):
        if os.path.relpath(d, root).split(os.sep)[0] == "cmd":
            continue
        for f in files:
            if f.endswith(".rs") and f != "main.rs":
                p = os.path.join(d, f)
                found += [(n, p, s, c) for n, s, c in functions(p) if c > limit]
    for name, path, start, count in sorted(found, key=lambda x: -x[3]):
        print(f"{count:5} {path}:{start} {name}")


if __name__ == "__main__":
    main()
