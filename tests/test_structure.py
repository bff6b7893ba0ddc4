"""The package's structure: no import circle, no oversized module, and docs/architecture.md's file tree
matches the package. Checked on every test run, so the house stays as the architecture page draws it."""

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "vaekit"
MAX_LINES = 600


def modules() -> dict[str, Path]:
    """{dotted module name: file} for every module of the package (a package's __init__ is the package)."""
    out = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at any depth of the file (function-level too).

    `from a.b import c` ties to a.b.c when that is a module, else to a.b; a module's own package
    __init__ counts as a module of its own."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges = {m: set() for m in mods}
    for m, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = m.split(".") if is_pkg else m.split(".")[:-1]
                    here = here[: len(here) - (node.level - 1)]
                    base = ".".join(here + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            for target in targets:
                r = resolve(target)
                if r and r != m and r.split(".")[0] == PACKAGE:
                    edges[m].add(r)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    found = cycles(import_graph(modules()))
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_module_over_600_lines():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


def architecture_tree() -> set[str]:
    """The files that docs/architecture.md's tree (the first ``` block under "## The house") names,
    as paths relative to src/vaekit."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("## The house", 1)[1].split("```", 2)[1]
    names, stack = set(), []  # stack of (indent, folder)
    for line in block.splitlines():
        m = re.match(r"^( *)(\S+)", line)
        if not m or m.group(2) == "src/vaekit/":
            continue
        indent, token = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        prefix = "/".join(folder for _, folder in stack)
        for name in token.split(","):
            if not name:
                continue
            path = f"{prefix}/{name}" if prefix else name
            if name.endswith("/"):
                stack.append((indent, name.rstrip("/")))
                names.add(path.rstrip("/") + "/__init__.py")
            elif name.endswith(".py"):
                names.add(path)
    return names


def test_architecture_page_draws_the_package():
    drawn = architecture_tree()
    actual = {str(p.relative_to(SRC / PACKAGE)) for p in (SRC / PACKAGE).rglob("*.py") if p.name != "__main__.py"}
    assert drawn - actual == set(), f"docs/architecture.md names modules that do not exist: {sorted(drawn - actual)}"
    assert actual - drawn == set(), f"modules missing from docs/architecture.md's tree: {sorted(actual - drawn)}"


def test_every_public_name_resolves():
    """Each name of `vaekit.__all__` (imported lazily) is there."""
    import vaekit

    missing = [name for name in vaekit.__all__ if getattr(vaekit, name, None) is None]
    assert missing == []


def test_subpackages_are_attributes_after_import_vaekit():
    """`import vaekit; vaekit.evaluate.evaluate(...)` works as the docs write it, in a fresh process
    whose `import vaekit` has imported no JAX."""
    import subprocess
    import sys

    code = ("import sys, vaekit; assert 'jax' not in sys.modules; "
            "print(vaekit.evaluate.evaluate.__name__, vaekit.runtime.configure.__name__, vaekit.data.load_data.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["evaluate", "configure", "load_data"]
    import vaekit

    names = {p.name for p in (SRC / PACKAGE).iterdir() if (p / "__init__.py").exists() and p.name != "cli"}
    assert names <= set(vaekit._SUBMODULES) | {"presets"}, names - set(vaekit._SUBMODULES)


def test_training_path_functions_read_in_one_screen():
    """No function of the training path (training/ and runs/train.py) is over 60 lines."""
    files = [*(SRC / PACKAGE / "training").glob("*.py"), SRC / PACKAGE / "runs" / "train.py"]
    long = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long[f"{path.name}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert long == {}
