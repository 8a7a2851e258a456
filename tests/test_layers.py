"""herd's layers import only downward: cli -> fleet -> gateway -> server -> engine -> model;
herd.protocol imports nothing else of herd, herd.batch (the Batch API, used by server and
gateway) only herd.protocol, herd.bench only herd.protocol, herd.plan only the
torch-free model config reader. Read from the source with `ast`, lazy (in-function) imports
included: a dependency is a dependency wherever the import statement sits."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ORDER = ["cli", "fleet", "gateway", "server", "engine", "model"]  # each may import those after it
ALLOWED = {pkg: set(ORDER[i + 1 :]) | {"protocol", "batch"} for i, pkg in enumerate(ORDER)}
ALLOWED["model"] = set()
ALLOWED["engine"] = {"model"}
ALLOWED["cli"] |= {"bench", "plan", "herd"}  # the command line reaches every part
ALLOWED.update(
    protocol=set(), batch={"protocol"}, bench={"protocol"}, plan={"model"}, herd={"engine"}
)
# What plan may read of herd.model: the torch-free config reader and what it imports.
PLAN_MODEL_MODULES = {"herd.model.config", "herd.model.errors", "herd.model.gguf_file"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """herd modules `path` imports (from-imports resolved to the module or package named)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
    return {m for m in found if m == "herd" or m.startswith("herd.")}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted((SRC / "herd").rglob("*.py"))}


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "herd"


def cycles(nodes: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one node (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in nodes.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def test_every_package_is_known():
    assert {package(m) for m in graph()} == set(ALLOWED)


def test_imports_point_down():
    upward = []
    for module, targets in graph().items():
        src = package(module)
        for target in targets:
            dst = package(target)
            if dst != src and dst not in ALLOWED[src]:
                upward.append(f"{module} -> {target}")
            if src == "plan" and dst == "model" and target not in PLAN_MODEL_MODULES:
                upward.append(f"{module} -> {target} (plan reads only the model config)")
    assert upward == []


def test_no_cycle_between_packages():
    edges: dict[str, set[str]] = {}
    for module, targets in graph().items():
        edges.setdefault(package(module), set()).update(
            package(t) for t in targets if package(t) != package(module)
        )
    assert cycles(edges) == []


@pytest.mark.parametrize("pkg", ["server", "engine", "model", "protocol", "gateway", "batch"])
def test_no_module_cycle_inside(pkg):
    g = graph()
    inside = {m: {t for t in ts if package(t) == pkg and t in g} for m, ts in g.items()}
    inside = {m: ts for m, ts in inside.items() if package(m) == pkg and m != f"herd.{pkg}"}
    assert cycles(inside) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_plan_and_the_model_config_load_without_torch_or_the_engine():
    code = (
        "import sys, herd.plan, herd.model.config, herd.cli.plan_cmds; "
        "print(sorted(m for m in ('torch', 'herd.engine', 'herd.server') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
