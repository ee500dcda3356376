"""symcx's layout, read from the source with ``ast`` (nothing is imported).

1. The import graph of ``symcx/`` has no cycle. Every import of a symcx module counts:
   at module level and inside functions and methods, relative and absolute; only imports
   under ``if TYPE_CHECKING:`` are left out (they never run). ``from . import x`` imports the
   submodule ``x`` when there is one, else the package ``__init__`` (a child importing a name
   from its parent's ``__init__`` is an edge to that parent). Importing ``p.q.m`` from outside
   ``p`` also runs ``p/__init__`` and ``p/q/__init__``: edges to those packages too.
2. Private torch is reached only through ``symcx/_torch.py``: no other module imports or
   touches ``torch._*``, ``torch.utils._*`` or ``torch.fx.experimental``, imports a private
   name from torch, or reads a private op attribute (``._schema`` …). ``tests/`` is held to
   the same rule in a separate test.

Each failure lists every offence as ``path:line``, so the message is the to-do list.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "symcx"
TESTS = ROOT / "tests"
TORCH_GATEWAY = PACKAGE / "_torch.py"

#: Private attributes of torch objects (ops, autograd nodes) that only _torch.py may read.
PRIVATE_ATTRIBUTES = frozenset(
    {"_schema", "_opname", "_overloadname", "_qualified_op_name", "_sequence_nr", "_get_sequence_nr"}
)


# --------------------------------------------------------------------------- reading modules


def module_names(package: Path) -> dict[str, Path]:
    """Dotted name → file for every module under ``package`` (``p/__init__.py`` is ``p``)."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING`` (the test of an ``if``)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:`` (its ``else`` is kept)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(reversed(node.orelse))
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# --------------------------------------------------------------------------- the import graph


def _resolve_from(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` names (``from ..x import y`` → ``pkg.x``)."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _with_packages(target: str, importer: str, modules: dict[str, Path]) -> set[str]:
    """``target`` plus the packages above it that importing it runs and ``importer`` is not in."""
    parts = target.split(".")
    out = {target}
    for k in range(1, len(parts)):
        package = ".".join(parts[:k])
        if package in modules and not (importer == package or importer.startswith(package + ".")):
            out.add(package)
    return out & set(modules)


def imported_modules(importer: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(symcx module, line) for each import of a symcx module that ``importer`` can run."""
    is_package = path.name == "__init__.py"
    for node in runtime_nodes(_parse(path)):
        targets: set[str] = set()
        if isinstance(node, ast.Import):
            for alias in node.names:
                targets |= _with_packages(alias.name, importer, modules)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve_from(node, importer, is_package)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                targets |= _with_packages(sub if sub in modules else source, importer, modules)
        for target in sorted(targets - {importer}):
            yield target, node.lineno


def import_graph(package: Path, root: Path = ROOT) -> nx.DiGraph:
    """Modules of ``package`` as nodes, an edge per import; ``lines`` says where (relative to ``root``)."""
    modules = module_names(package)
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    for name, path in modules.items():
        for target, line in imported_modules(name, path, modules):
            if not g.has_edge(name, target):
                g.add_edge(name, target, lines=[])
            g.edges[name, target]["lines"].append(f"{_rel(path, root)}:{line}")
    return g


def describe_cycles(g: nx.DiGraph, limit: int = 200) -> list[str]:
    """Each elementary cycle as ``a (a.py:3) -> b (b.py:9) -> a``, shortest first."""
    cycles = []
    for k, cycle in enumerate(nx.simple_cycles(g)):
        if k == limit:
            break
        start = cycle.index(min(cycle))
        cycles.append(cycle[start:] + cycle[:start])
    lines = []
    for cycle in sorted(cycles, key=lambda c: (len(c), c)):
        hops = [f"{a} ({', '.join(g.edges[a, b]['lines'])})" for a, b in zip(cycle, cycle[1:] + cycle[:1])]
        lines.append(" -> ".join(hops + [cycle[0]]))
    return lines


def test_symcx_import_graph_has_no_cycle():
    g = import_graph(PACKAGE)
    cycles = describe_cycles(g)
    assert not cycles, f"{len(cycles)} import cycle(s) in symcx/:\n" + "\n".join(cycles)


# --------------------------------------------------------------------------- private torch


def _dotted(node: ast.expr) -> list[str] | None:
    """``torch.utils._pytree`` → ``["torch", "utils", "_pytree"]``; None if not a name chain."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_torch_part(chain: list[str]) -> str | None:
    """The private prefix of a ``torch...`` module/attribute chain, else None.

    ``torch.ops.<namespace>.<op>`` names are op names, not private API (``aten._softmax``).
    """
    if chain[0] != "torch":
        return None
    if chain[:3] == ["torch", "fx", "experimental"]:
        return "torch.fx.experimental"
    for k, part in enumerate(chain[1:], 1):
        if chain[1] == "ops" and k >= 3:
            return None
        if _private(part):
            return ".".join(chain[: k + 1])
    return None


def _torch_aliases(tree: ast.AST) -> dict[str, list[str]]:
    """Local names bound to torch objects by imports: ``import torch.nn as nn`` → nn: torch.nn."""
    aliases: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "torch":  # import torch.x binds torch; import torch.x as y binds y
                    aliases[a.asname or "torch"] = a.name.split(".") if a.asname else ["torch"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "torch":
            for a in node.names:
                aliases[a.asname or a.name] = [*node.module.split("."), a.name]
    return aliases


def _import_offences(node: ast.AST) -> Iterator[str]:
    """The import statement (its offending names only), if it brings in private torch."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names if private_torch_part(a.name.split("."))]
        if names:
            yield f"import {', '.join(names)}"
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "torch":
        names = [
            a.name for a in node.names
            if private_torch_part([*node.module.split("."), a.name]) or _private(a.name)
        ]
        if names:
            yield f"from {node.module} import {', '.join(names)}"


def _attribute_offences(node: ast.AST, aliases: dict[str, list[str]]) -> Iterator[str]:
    if isinstance(node, ast.Attribute):
        if node.attr in PRIVATE_ATTRIBUTES:
            yield f"private op attribute .{node.attr}"
            return
        chain = _dotted(node)
        if chain and chain[0] in aliases:
            part = private_torch_part(aliases[chain[0]] + chain[1:])
            if part:
                yield part
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "hasattr", "setattr")
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and node.args[1].value in PRIVATE_ATTRIBUTES
    ):
        yield f"private op attribute {node.func.id}(..., {node.args[1].value!r})"


def private_torch_uses(path: Path, root: Path = ROOT) -> list[str]:
    """``path:line: what`` for each private torch use in the file, sorted.

    A chain is reported by its private prefix, once a line: ``torch._C._get_x`` and its inner
    ``torch._C`` both give ``torch._C``.
    """
    tree = _parse(path)
    aliases = _torch_aliases(tree)
    found = set()
    for node in ast.walk(tree):
        for what in [*_import_offences(node), *_attribute_offences(node, aliases)]:
            found.add((node.lineno, what))
    return [f"{_rel(path, root)}:{line}: {what}" for line, what in sorted(found)]


def _offences(files: list[Path]) -> list[str]:
    return [o for path in files for o in private_torch_uses(path)]


def test_symcx_reaches_private_torch_only_through_the_gateway():
    files = [p for p in sorted(PACKAGE.rglob("*.py")) if p != TORCH_GATEWAY]
    offences = _offences(files)
    assert not offences, (
        f"{len(offences)} private torch use(s) outside symcx/_torch.py (move each there):\n" + "\n".join(offences)
    )


def test_tests_reach_private_torch_only_through_the_gateway():
    offences = _offences(sorted(TESTS.rglob("*.py")))
    assert not offences, (
        f"{len(offences)} private torch use(s) in tests/ (import them from symcx._torch):\n" + "\n".join(offences)
    )


# --------------------------------------------------------------------------- the checkers themselves


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_import_graph_sees_function_relative_and_parent_imports(tmp_path):
    package = _write(tmp_path, {
        "pkg/__init__.py": "from .a import f\n__version__ = '1'\n",
        "pkg/a.py": "def f():\n    from . import __version__\n    return __version__\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/m.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import f\n"
                        "else:\n    import pkg.b\n",
        "pkg/b.py": "from .sub import m\nfrom . import sub\n",
    })
    g = import_graph(package, root=tmp_path)
    assert set(g.edges) == {
        ("pkg", "pkg.a"), ("pkg.a", "pkg"),  # a child importing a name from its parent's __init__
        ("pkg.sub.m", "pkg.b"),  # the TYPE_CHECKING import is left out, its else kept
        ("pkg.b", "pkg.sub.m"), ("pkg.b", "pkg.sub"),  # from .sub import m also runs sub/__init__
    }
    assert g.edges["pkg.b", "pkg.sub"]["lines"] == ["pkg/b.py:1", "pkg/b.py:2"]
    assert describe_cycles(g) == [
        "pkg (pkg/__init__.py:1) -> pkg.a (pkg/a.py:2) -> pkg",
        "pkg.b (pkg/b.py:1) -> pkg.sub.m (pkg/sub/m.py:5) -> pkg.b",
    ]


def test_private_torch_uses_are_each_found_once(tmp_path):
    (tmp_path / "tests").mkdir()
    path = tmp_path / "tests" / "m.py"
    path.write_text(
        "import torch\n"
        "import torch._dynamo\n"
        "from torch.utils import _pytree\n"
        "from torch.fx.experimental.symbolic_shapes import ShapeEnv\n"
        "from torch.nn.utils.stateless import _reparametrize_module\n"
        "import torch.nn as nn\n"
        "aten = torch.ops.aten\n"
        "x = torch.ops.aten._softmax.default, aten._softmax, torch.__version__, nn.Linear\n"
        "y = torch._C._get_mkldnn_enabled()\n"
        "z = aten.mm.default._schema, getattr(aten.mm, '_qualified_op_name'), nn._private\n"
    )
    assert private_torch_uses(path, root=tmp_path) == [
        "tests/m.py:2: import torch._dynamo",
        "tests/m.py:3: from torch.utils import _pytree",
        "tests/m.py:4: from torch.fx.experimental.symbolic_shapes import ShapeEnv",
        "tests/m.py:5: from torch.nn.utils.stateless import _reparametrize_module",
        "tests/m.py:9: torch._C",
        "tests/m.py:10: private op attribute ._schema",
        "tests/m.py:10: private op attribute getattr(..., '_qualified_op_name')",
        "tests/m.py:10: torch.nn._private",
    ]


@pytest.mark.parametrize("chain, part", [
    ("torch.utils._pytree.tree_map", "torch.utils._pytree"),
    ("torch.fx.experimental.symbolic_shapes", "torch.fx.experimental"),
    ("torch.ops.aten._convolution.default", None),
    ("torch.ops._private", "torch.ops._private"),
    ("torch.nn.functional.linear", None),
    ("torch.__version__", None),
])
def test_private_torch_part(chain, part):
    assert private_torch_part(chain.split(".")) == part
