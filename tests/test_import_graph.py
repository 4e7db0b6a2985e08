"""The package's import graph, read from the source: imports run one way and never in a circle.

Layers (DESIGN.md): cli/info -> workflows -> training, tickets, models, data, nn -> ops -> the compiled
extension and the small base modules. Every import counts, the ones inside functions included: a lazy
import against the layer order is still a dependency against it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lth_kernels"
WORKFLOWS = ("imp", "train", "early_bird", "gfs", "elastic", "jackpot", "data_ticket")

# rank of a top-level sub-package or module: a module may import only modules of the same or a lower rank
RANKS = {"cli": 4, "info": 4, "workflows": 3, "training": 2, "tickets": 2, "models": 2, "data": 2, "nn": 2,
         "ops": 1, "_C": 0, "_ext": 0, "_util": 0, "_io": 0, "": 0}
# peers that must not import each other in this direction (nn is drop-in: no trainer)
FORBIDDEN = {("nn", "training")}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported package module, line, at module level) for every import of ``lth_kernels`` in the file."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import sub`` imports the sub-module ``pkg.sub`` when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            if t == "lth_kernels" or t.startswith("lth_kernels."):
                while t not in known and "." in t:
                    t = t.rsplit(".", 1)[0]
                out.append((t, node.lineno, id(node) in top))
    return out


def layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.fixture(scope="module")
def graph():
    mods = all_modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def test_every_import_follows_the_layer_order(graph):
    bad = []
    for mod, deps in graph.items():
        src = layer(mod)
        assert src in RANKS, f"{mod}: top-level module {src!r} has no layer in RANKS"
        for dep, line, _ in deps:
            dst = layer(dep)
            if RANKS[dst] > RANKS[src] or (src, dst) in FORBIDDEN:
                bad.append(f"{mod}:{line} imports {dep} ({src} may not import {dst})")
    assert not bad, "\n".join(bad)


def test_no_import_cycle(graph):
    # module-level imports: what runs when a module is imported
    edges = {m: sorted({d for d, _, top in deps if top and d != m}) for m, deps in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in edges.get(m, ()):
            if state.get(d) == 1:
                cycles.append(" -> ".join([*stack[stack.index(d):], d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("workflow", WORKFLOWS)
def test_workflow_hparams_never_import_back(graph, workflow):
    # runner -> stage modules -> hparams, never back: the hparams, presets and CLI modules import no runner
    # or stage module of their workflow, not even lazily
    pkg = f"lth_kernels.workflows.{workflow}"
    allowed = {f"{pkg}.hparams", f"{pkg}.presets", f"{pkg}.cli", f"{pkg}.sizes", f"{pkg}.branches"}
    for room in ("hparams", "presets"):
        for dep, line, _ in graph.get(f"{pkg}.{room}", ()):
            if dep.startswith(pkg + "."):
                assert dep in allowed, f"{pkg}.{room}:{line} imports {dep}"
    for dep, line, top in graph[f"{pkg}.cli"]:
        assert not (top and dep.startswith(pkg + ".") and dep not in allowed), f"{pkg}.cli:{line} imports {dep}"


def test_help_paths_import_no_torch():
    # ``lth <workflow> --help`` must stay instant: the CLI, every workflow's face and hparams load no torch
    mods = ["lth_kernels.cli", *(f"lth_kernels.workflows.{w}" for w in WORKFLOWS)]
    code = "import sys\n" + "".join(f"import {m}\n" for m in mods) + "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_checker_sees_a_violation(tmp_path):
    # the graph reader itself: a lazy import of a workflow from ops, and a relative import, are both seen
    pkg = tmp_path / "lth_kernels"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ops" / "__init__.py").write_text("from . import x\n")
    (pkg / "ops" / "x.py").write_text("def f():\n    from lth_kernels.workflows import imp\n")
    known = {"lth_kernels", "lth_kernels.ops", "lth_kernels.ops.x", "lth_kernels.workflows"}
    assert imports_of("lth_kernels.ops.x", pkg / "ops" / "x.py", known) == [("lth_kernels.workflows", 2, False)]
    assert imports_of("lth_kernels.ops", pkg / "ops" / "__init__.py", known) == [("lth_kernels.ops.x", 1, True)]
