"""The package's layering, read from the source with :mod:`ast` (nothing is imported).

Every module of plstm_np has a layer (the table :data:`LAYERS` below). The tests fail on

- a module without a layer (add it, or its subpackage's prefix, to :data:`LAYERS`);
- an import of a module of a higher layer (imports within one subpackage are free);
- an import cycle among plstm_np modules;
- an import of a plstm_np module inside a function or method (the usual way of hiding a
  cycle; optional third-party packages may still be imported there);
- a private name (``_name``, dunders excepted) of another plstm_np module, used as
  ``module._name`` or imported with ``from .module import _name``;
- a relative import that names no plstm_np module.

The checker is a handful of functions over a package folder, so the last tests run it on
small packages written to a temporary folder, one per kind of violation.
"""
from __future__ import annotations

import ast
import itertools
import textwrap
from pathlib import Path

import pytest

PACKAGE = "plstm_np"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

#: Module name or prefix -> layer. A module may import modules of its own layer or below;
#: a prefix covers a subpackage's modules (the longest matching prefix wins). The package
#: name itself stands for ``plstm_np/__init__.py`` only: the public facade, on top.
LAYERS = {
    # 0: foundations, which know nothing of networks
    "plstm_np.config": 0,
    "plstm_np.time_gate": 0,
    "plstm_np.validation": 0,
    "plstm_np.scalar_math": 0,
    "plstm_np.files": 0,
    "plstm_np.losses": 0,
    "plstm_np.statistics": 0,
    "plstm_np.optim": 0,
    # 1: data sets
    "plstm_np.dataset": 1,
    "plstm_np.mnist": 1,
    "plstm_np.nmnist": 1,
    "plstm_np.event_camera": 1,
    "plstm_np.tasks": 1,
    # 2: backends: the registry, the NumPy reference, the Numba and CUDA kernels
    "plstm_np.backends": 2,
    "plstm_np.reference": 2,
    # 3: sequence layers
    "plstm_np.layers": 3,
    "plstm_np.gru": 3,
    "plstm_np.batchnorm": 3,
    "plstm_np.bidirectional": 3,
    "plstm_np.time_feature": 3,
    # 4: streaming inference, below the network that offers it (Network.stream)
    "plstm_np.streaming": 4,
    # 5: the network
    "plstm_np.network": 5,
    # 6: what uses a network: save/load, training, gradient checking
    "plstm_np.io": 6,
    "plstm_np.training": 6,
    "plstm_np.gradcheck": 6,
    "plstm_np.backends.cuda.training": 6,  # device-resident training of a network
    # 7: the paper's experiments
    "plstm_np.experiments": 7,
    # 8: the command line
    "plstm_np.cli": 8,
    "plstm_np.__main__": 8,
    # 9: the package's __init__
    "plstm_np": 9,
}


# ---------------------------------------------------------------------- the checker
def find_modules(root, package):
    """``{module name: (path, is_package, path shown)}`` for every ``.py`` file under ``root``."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        relative = path.relative_to(root)
        parts = [package, *relative.with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = (path, is_package, f"{package}/{relative.as_posix()}")
    return modules


def layer_of(module, layers, package):
    """The layer of ``module`` by the longest matching prefix, or None."""
    if module == package:
        return layers.get(package)
    prefixes = [p for p in layers if p != package and (module == p or module.startswith(p + "."))]
    return layers[max(prefixes, key=len)] if prefixes else None


def _is_private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


class _Imports(ast.NodeVisitor):
    """Collects a module's imports of the package, noting those inside functions."""

    def __init__(self, module, is_package, modules, package):
        self.module, self.modules, self.package = module, modules, package
        self.here = module if is_package else module.rpartition(".")[0]
        self.depth = 0
        self.edges = []       # (target module, line) of module-level imports
        self.in_functions = []  # (target module, line, function)
        self.private = []     # (description, line)
        self.unresolved = []  # (description, line)
        self.bound = {}       # local name -> module, for ``name._private`` accesses
        self.function = None

    def _record(self, target, line):
        found, record = ((self.in_functions, (target, line, self.function)) if self.depth
                         else (self.edges, (target, line)))
        if record not in found:  # ``from .x import a, b`` counts once
            found.append(record)

    def _bind(self, name, target):
        if not self.depth:
            self.bound[name] = target

    def visit_Import(self, node):
        for alias in node.names:
            name = alias.name
            if name != self.package and not name.startswith(self.package + "."):
                continue
            if name not in self.modules:
                self.unresolved.append((f"import {name}: no such module", node.lineno))
                if self.depth:
                    self._record(name, node.lineno)
                continue
            self._record(name, node.lineno)
            if alias.asname:
                self._bind(alias.asname, name)
            else:
                self._bind(self.package, self.package)

    def visit_ImportFrom(self, node):
        if node.level:
            parts = self.here.split(".")
            if node.level - 1 >= len(parts):
                self.unresolved.append(("relative import beyond the package", node.lineno))
                return
            base = ".".join(parts[: len(parts) - (node.level - 1)])
            if node.module:
                base = f"{base}.{node.module}"
        else:
            base = node.module or ""
            if base != self.package and not base.startswith(self.package + "."):
                return
        dots = "." * node.level + (node.module or "")
        if base not in self.modules:
            self.unresolved.append((f"from {dots} import ...: no module {base}", node.lineno))
            if self.depth:
                self._record(base, node.lineno)
            return
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in self.modules:  # ``from package import submodule``
                self._record(sub, node.lineno)
                self._bind(alias.asname or alias.name, sub)
                continue
            if base == self.module:
                self.unresolved.append(
                    (f"from {dots} import {alias.name}: the module imports itself", node.lineno))
                continue
            self._record(base, node.lineno)
            if _is_private(alias.name):
                self.private.append((f"from {dots} import {alias.name} ({base}.{alias.name})",
                                     node.lineno))

    def visit_Attribute(self, node):
        chain, inner = [], node
        while isinstance(inner, ast.Attribute):
            chain.append(inner.attr)
            inner = inner.value
        if isinstance(inner, ast.Name) and inner.id in self.bound:
            target = self.bound[inner.id]
            for attr in reversed(chain):
                if f"{target}.{attr}" in self.modules:
                    target = f"{target}.{attr}"
                    continue
                if _is_private(attr) and target != self.module:
                    self.private.append((f"{target}.{attr}", node.lineno))
                break
            return  # the chain is handled whole
        self.generic_visit(node)

    def _visit_function(self, node):
        outer = self.function
        self.function = node.name if outer is None else f"{outer}.{node.name}"
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1
        self.function = outer

    visit_FunctionDef = visit_AsyncFunctionDef = _visit_function

    def visit_Lambda(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1


def analyse(root, package):
    """Parse every module under ``root``: ``(modules, {module: _Imports})``."""
    modules = find_modules(root, package)
    found = {}
    for module, (path, is_package, _) in modules.items():
        visitor = _Imports(module, is_package, modules, package)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        found[module] = visitor
    return modules, found


def _where(modules, module, line):
    return f"{modules[module][2]}:{line}"


def function_imports(modules, found):
    """Messages for imports of the package inside functions."""
    return [f"{_where(modules, m, line)}: {m} imports {target} inside {func}(); import it at "
            f"the top of the module (and fix the layering if that makes a cycle)"
            for m, v in found.items() for target, line, func in v.in_functions]


def private_uses(modules, found):
    """Messages for private names of other modules of the package."""
    return [f"{_where(modules, m, line)}: {m} uses the private name {what} of another module; "
            f"give it a public, documented name"
            for m, v in found.items() for what, line in v.private]


def unresolved_imports(modules, found):
    """Messages for imports that name no module of the package."""
    return [f"{_where(modules, m, line)}: {m}: {what}" for m, v in found.items()
            for what, line in v.unresolved]


def graph(found):
    """``{module: {imported module: first line}}`` of the module-level imports."""
    edges = {}
    for m, v in found.items():
        edges[m] = {}
        for target, line in v.edges:
            if target != m:
                edges[m].setdefault(target, line)
    return edges


def cycles(edges):
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
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
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    return out


def _one_cycle(edges, component):
    """A shortest import chain from the component's first module back to itself."""
    start, members = component[0], set(component)
    paths, seen = [[start]], {start}
    while paths:
        grown = []
        for path in paths:
            for w in sorted(edges.get(path[-1], ())):
                if w == start:
                    return path + [start]
                if w in members and w not in seen:
                    seen.add(w)
                    grown.append(path + [w])
        paths = grown
    return component


def cycle_messages(modules, found):
    """Messages for import cycles among the package's modules."""
    edges = graph(found)
    messages = []
    for component in cycles(edges):
        chain = _one_cycle(edges, component)
        steps = ", ".join(f"{a} -> {b} ({_where(modules, a, edges[a][b])})"
                          for a, b in itertools.pairwise(chain))
        messages.append(f"import cycle among {component}: {steps}")
    return messages


def unknown_modules(modules, layers, package):
    """Messages for modules the layer table does not cover."""
    return [f"{m} ({modules[m][2]}) has no layer: add it, or its subpackage's prefix, to LAYERS "
            f"at the top of tests/test_layering.py" for m in modules
            if layer_of(m, layers, package) is None]


def _subpackage(module, modules, package):
    """``package.<sub>`` when ``module`` lies in (or is) a subpackage, else None."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    sub = ".".join(parts[:2])
    return sub if modules.get(sub, (None, False))[1] else None


def upward_imports(modules, found, layers, package):
    """Messages for imports of a module of a higher layer."""
    messages = []
    for a, targets in graph(found).items():
        la = layer_of(a, layers, package)
        for b, line in targets.items():
            lb = layer_of(b, layers, package)
            if la is None or lb is None or lb <= la:
                continue
            sub = _subpackage(a, modules, package)
            if sub is not None and sub == _subpackage(b, modules, package):
                continue
            messages.append(f"{_where(modules, a, line)}: {a} (layer {la}) imports {b} "
                            f"(layer {lb}), a higher layer: move what it needs down, or pass it in")
    return messages


# ---------------------------------------------------------------------- the package
@pytest.fixture(scope="module")
def package():
    return analyse(PACKAGE_DIR, PACKAGE)


def _check(messages):
    assert not messages, f"{len(messages)} problem(s):\n" + "\n".join(messages)


def test_every_module_has_a_layer(package):
    modules, _ = package
    _check(unknown_modules(modules, LAYERS, PACKAGE))


def test_imports_go_down_the_layers(package):
    _check(upward_imports(*package, LAYERS, PACKAGE))


def test_no_import_cycles(package):
    _check(cycle_messages(*package))


def test_no_imports_of_the_package_inside_functions(package):
    _check(function_imports(*package))


def test_no_private_names_across_modules(package):
    _check(private_uses(*package))


def test_relative_imports_resolve(package):
    _check(unresolved_imports(*package))


# ---------------------------------------------------------------------- the checker itself
def write_package(tmp_path, files):
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return analyse(root, "pkg")


TOY_LAYERS = {"pkg.low": 0, "pkg.sub": 0, "pkg.high": 1, "pkg": 2}
CLEAN = {"__init__.py": "from .high import f\n", "low.py": "def g():\n    import json\n",
         "high.py": ("from . import low\nfrom .sub import helper as h\n"
                     "f = low.g\nx = low.__name__\n"),
         "sub/__init__.py": "from .a import helper\n", "sub/a.py": "from . import b\nhelper = 1\n",
         "sub/b.py": "import pkg.low\n"}


def test_checker_passes_a_clean_package(tmp_path):
    modules, found = write_package(tmp_path, CLEAN)
    assert set(modules) == {"pkg", "pkg.low", "pkg.high", "pkg.sub", "pkg.sub.a", "pkg.sub.b"}
    assert not (unknown_modules(modules, TOY_LAYERS, "pkg")
                + upward_imports(modules, found, TOY_LAYERS, "pkg")
                + cycle_messages(modules, found) + function_imports(modules, found)
                + private_uses(modules, found) + unresolved_imports(modules, found))


@pytest.mark.parametrize("files, check, expected", [
    ({"low.py": "def g():\n    from . import high\n"}, function_imports,
     "pkg.low imports pkg.high inside g()"),
    ({"low.py": "from .high import f\n", "high.py": "from .low import g\nf = 1\n"}, cycle_messages,
     "import cycle among ['pkg.high', 'pkg.low']"),
    ({"low.py": "from .high import f\n"}, upward_imports,
     "pkg.low (layer 0) imports pkg.high (layer 1), a higher layer"),
    ({"high.py": "from . import low\nlow._secret()\n"}, private_uses,
     "private name pkg.low._secret"),
    ({"high.py": "import pkg.sub.a\npkg.sub.a._x\n"}, private_uses, "private name pkg.sub.a._x"),
    ({"high.py": "from .low import _secret\n"}, private_uses, "from .low import _secret"),
    ({"extra.py": ""}, lambda m, f: unknown_modules(m, TOY_LAYERS, "pkg"), "pkg.extra"),
    ({"high.py": "from .nowhere import f\n"}, unresolved_imports, "no module pkg.nowhere"),
])
def test_checker_finds_each_violation(tmp_path, files, check, expected):
    modules, found = write_package(tmp_path, {**CLEAN, **files})
    if check is upward_imports:
        messages = upward_imports(modules, found, TOY_LAYERS, "pkg")
    else:
        messages = check(modules, found)
    assert any(expected in message for message in messages), messages
