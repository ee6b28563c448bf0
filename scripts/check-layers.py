#!/usr/bin/env python3
"""Fails when a module of node/src uses a layer above it (docs/architecture.md has the map).

Every `crate::` path outside comments and strings counts, in `use` lines (also when they span
several lines or nest braces: `use crate::{a::{b, c}, d}` uses `a` and `d`) and in code.
"""
import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "node" / "src"

# layer -> the crate modules it may use (itself included)
MAY = {
    "api": "api cluster raft transport structures storage runtime metrics config error",
    "cluster": "cluster raft transport structures storage runtime metrics config error",
    "raft": "raft transport structures storage runtime config error",
    "transport": "transport storage runtime error",
    "structures": "structures storage error",
    "storage": "storage runtime metrics error",
    "runtime": "runtime",
    "metrics": "metrics",
    "config": "config",
    "error": "error config",
}
# `crate::Error` and `crate::Result` are re-exports of the error module.
ALIASES = {"Error": "error", "Result": "error"}


def strip(text: str) -> str:
    """Removes comments and string literals (their contents could look like paths)."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return re.sub(r"//[^\n]*", "", text)


def top_names(group: str) -> list[str]:
    """The first path segment of each item of a brace group, at nesting depth 0."""
    names, depth, item = [], 0, ""
    for ch in group:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if depth == 0 and ch == ",":
            names.append(item)
            item = ""
        elif depth == 0:
            item += ch
    names.append(item)
    return [re.split(r"::|\s", n.strip())[0] for n in names if n.strip()]


def used_modules(text: str) -> set[str]:
    used = set()
    for m in re.finditer(r"\bcrate::", text):
        rest = text[m.end():]
        if rest.startswith("{"):
            depth, end = 0, 0
            for i, ch in enumerate(rest):
                depth += ch == "{"
                depth -= ch == "}"
                if depth == 0:
                    end = i
                    break
            used.update(top_names(rest[1:end]))
        else:
            name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", rest)
            if name:
                used.add(name.group(0))
    return {ALIASES.get(u, u) for u in used if u not in ("self",)}


def main() -> int:
    bad = []
    for layer, allowed in MAY.items():
        files = sorted((SRC / layer).rglob("*.rs")) if (SRC / layer).is_dir() else [SRC / f"{layer}.rs"]
        if not files or not files[0].exists():
            print(f"check-layers: no module {layer}", file=sys.stderr)
            return 1
        for f in files:
            for module in sorted(used_modules(strip(f.read_text()))):
                if module not in allowed.split():
                    bad.append(f"{f.relative_to(SRC)}: {layer} uses crate::{module}")
    if bad:
        print("layer violations (docs/architecture.md):", *bad, sep="\n  ", file=sys.stderr)
        return 1
    print("layers: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
