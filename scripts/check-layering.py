#!/usr/bin/env python3
"""Checks the crate's import graph (CI runs it from the test command).

- No two modules import each other, counted file by file (a module importing its own
  parent or child is how Rust nests code and does not count), and folder by folder at the
  top of `src/` (`receiver`, `pipeline`, `exporter`, ...).
- `receiver/` imports nothing from `exporter/`: receivers hand requests to the pipeline.

Imports are read from `use crate::…`, `use super::…` and `use self::…` lines, and from
`crate::a::b` paths written in code; test modules (`tests.rs`, and everything after
`#[cfg(test)]` in a file) are skipped, since tests may reach across the house.
"""

import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"


def module_of(path: pathlib.Path) -> tuple:
    """`src/exporter/queue/mod.rs` -> ("exporter", "queue")."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts.pop()
    return tuple(parts)


def files() -> dict:
    found = {}
    for path in SRC.rglob("*.rs"):
        if path.name == "tests.rs":
            continue
        found[module_of(path)] = path
    return found


def code_of(path: pathlib.Path) -> str:
    text = path.read_text()
    cut = text.find("#[cfg(test)]")
    return text if cut < 0 else text[:cut]


def imports(module: tuple, text: str, modules: set) -> set:
    """The modules that `module` names, each resolved to the longest existing module path."""
    targets = set()
    paths = re.findall(r"\b(crate|super|self)((?:::\w+)+)", text)
    for root, rest in paths:
        segments = rest.strip(":").split("::")
        if root == "crate":
            base = []
        else:
            # A file's `super` is its parent module; `self` is the module itself.
            base = list(module)
            while segments and segments[0] == "super":
                segments.pop(0)
                base = base[:-1]
            if root == "super":
                base = base[:-1]
        full = base + segments
        while full and tuple(full) not in modules:
            full.pop()
        if full:
            targets.add(tuple(full))
    return targets


def related(a: tuple, b: tuple) -> bool:
    """Whether one module is the other's ancestor."""
    shorter, longer = sorted((a, b), key=len)
    return longer[: len(shorter)] == shorter


def main() -> int:
    found = files()
    modules = set(found) | {()}
    edges = {m: imports(m, code_of(p), modules) - {m} for m, p in found.items()}
    problems = []
    name = lambda m: "::".join(m) or "crate"
    for a, targets in edges.items():
        for b in targets:
            if a < b and a in edges.get(b, ()) and not related(a, b):
                problems.append(f"{name(a)} and {name(b)} import each other")
    top = {}
    for a, targets in edges.items():
        for b in targets:
            if a and b and a[0] != b[0]:
                top.setdefault(a[0], set()).add(b[0])
    for a, targets in top.items():
        for b in targets:
            if a < b and a in top.get(b, ()):
                problems.append(f"src/{a}/ and src/{b}/ import each other")
    if "exporter" in top.get("receiver", ()):
        problems.append("src/receiver/ imports from src/exporter/; receivers talk to the pipeline only")
    for problem in problems:
        print(f"layering: {problem}", file=sys.stderr)
    if not problems:
        print(f"layering: {len(found)} modules, no two import each other, receiver/ does not import exporter/")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
