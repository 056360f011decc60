#!/usr/bin/env python3
"""Checks the layout ARCHITECTURE.md promises, so that it stays true as the code moves:

1. No import circles between the modules of a crate (`use crate::a` in b and `use crate::b` in a, or a
   longer loop). A parent and its own submodules may name each other; doc comments and tests are not
   imports.
2. The "Where things live" map in ARCHITECTURE.md names every source file of every crate, and every file
   it names exists.

Exits non-zero with what is wrong. Standard library only."""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = ["src", "model-input/src", "worker/src", "coordinator/src", "lab/src", "bench-client/src", "test-support/src"]


def source_files(crate):
    for directory, _, files in os.walk(os.path.join(ROOT, crate)):
        for name in files:
            if name.endswith(".rs"):
                yield os.path.relpath(os.path.join(directory, name), os.path.join(ROOT, crate))


def module_path(relative):
    """`engine/mlx/mod.rs` -> `engine::mlx`; the crate roots have none."""
    parts = relative[:-3].split("/")
    if parts[-1] == "mod":
        parts = parts[:-1]
    if parts in (["lib"], ["main"]):
        return None
    return "::".join(parts)


def code_only(text):
    """The file without comments and without its `#[cfg(test)]` module."""
    text = text.split("#[cfg(test)]")[0]
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def related(a, b):
    return a == b or a.startswith(b + "::") or b.startswith(a + "::")


def module_edges(crate):
    modules = {}
    for relative in source_files(crate):
        name = module_path(relative)
        if name:
            with open(os.path.join(ROOT, crate, relative), encoding="utf-8") as f:
                modules[name] = code_only(f.read())
    edges = {name: set() for name in modules}
    for name, code in modules.items():
        parent = "::".join(name.split("::")[:-1])
        references = [r.split("::") for r in re.findall(r"\bcrate::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)", code)]
        references += [(parent.split("::") if parent else []) + [r] for r in re.findall(r"\bsuper::([a-z_][a-z0-9_]*)", code)]
        for parts in references:
            # The longest prefix that is a module is what the path imports from.
            for k in range(len(parts), 0, -1):
                target = "::".join(parts[:k])
                if target in modules:
                    if not related(name, target):
                        edges[name].add(target)
                    break
    return edges


def circles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def map_sections(readme):
    """The map's lines grouped by the crate folder that starts each section."""
    start = readme.index("## Where things live")
    block_start = readme.index("```", start) + 3
    block = readme[block_start:readme.index("```", block_start)]
    sections, current = {}, None
    for line in block.splitlines():
        if line and not line[0].isspace():
            current = line.split()[0].rstrip("/")
            sections[current] = []
        elif current:
            sections[current].append(line)
    return sections


def named_files(lines):
    """Every `name.rs`, `dir/name.rs` and `dir/{a, b}.rs` the lines mention, and folders (`dir/`)."""
    text = "\n".join(lines)
    files = set()
    for prefix, names in re.findall(r"([\w/]*)\{([\w ,]+)\}\.rs", text):
        files.update(prefix + n.strip() + ".rs" for n in names.split(","))
    text = re.sub(r"[\w/]*\{[\w ,]+\}\.rs", "", text)
    files.update(re.findall(r"[\w/]+\.rs", text))
    folders = set(re.findall(r"(?<![\w.])([a-z_]+(?:/[a-z_]+)*)/(?=\s)", text))
    return files, folders


def check_map(readme):
    problems = []
    sections = map_sections(readme)
    for crate in CRATES:
        lines = sections.get(crate)
        if lines is None:
            problems.append(f"ARCHITECTURE.md map: no section for {crate}/")
            continue
        files, folders = named_files(lines)
        present = set(source_files(crate))
        basenames = {os.path.basename(p) for p in present}
        for named in sorted(files):
            exists = named in present or named in basenames or any(p.endswith("/" + named) for p in present)
            # A file the crate's line mentions at the repository's root (build.rs).
            if not exists and not os.path.exists(os.path.join(ROOT, named)):
                problems.append(f"ARCHITECTURE.md map names {crate}/{named}, which does not exist")
        # mod.rs, lib.rs and main.rs say nothing alone: they count only with their folder.
        named_basenames = {os.path.basename(f) for f in files} - {"mod.rs", "lib.rs", "main.rs"}
        # A folder stands for its files only when the map names none of them one by one.
        whole_folders = [f for f in folders if not any(p.startswith(f + "/") and os.path.basename(p) in named_basenames for p in present)]
        for relative in sorted(present):
            covered = (
                relative in files
                or any(relative.endswith("/" + f) or f.endswith("/" + relative) for f in files)
                or os.path.basename(relative) in named_basenames
                or any(relative.startswith(folder + "/") for folder in whole_folders)
            )
            if not covered:
                problems.append(f"ARCHITECTURE.md map does not name {crate}/{relative}")
    return problems


def main():
    problems = []
    for crate in CRATES:
        for component in circles(module_edges(crate)):
            problems.append(f"{crate}: import circle between {', '.join(component)}")
    with open(os.path.join(ROOT, "ARCHITECTURE.md"), encoding="utf-8") as f:
        problems += check_map(f.read())
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"structure: no import circles in {len(CRATES)} crates; the ARCHITECTURE.md map names every source file")
    return 0


if __name__ == "__main__":
    sys.exit(main())
