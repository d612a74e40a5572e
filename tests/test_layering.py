"""The library holds the algorithm; its pictures live elsewhere.

The algorithm's modules (`core` to `kernels`) import neither matplotlib nor `flowpp.plotting`, not even inside a
function, and `flowpp.data` does not import the model. The imports are read from each module's syntax tree, so an
import inside a function counts as much as one at the top. Then, in fresh interpreters: the algorithm's modules
load no plotting code and no trainer, and `import flowpp` loads no plotting library.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALGORITHM = ("core", "bounds", "logistic", "layers", "attention", "coupling", "dequantizer", "model", "fast", "kernels")
PLOTTING = ("matplotlib", "flowpp.plotting")
FORBIDDEN = {**{name: PLOTTING for name in ALGORITHM}, "data": PLOTTING + ("flowpp.model",)}


def imported_modules(source: str, package: str = "flowpp") -> list[tuple[int, str]]:
    """(line, dotted name) of every module the source imports, relative imports resolved against `package`, with the
    names a `from` import takes (`from . import plotting` imports `flowpp.plotting`), and the constant names given
    to `importlib.import_module` or `__import__`. The body of a module-level `__getattr__` is left out: it runs
    only when a missing attribute is asked for (PEP 562; `flowpp.model` keeps an old import path that way), and the
    fresh-interpreter test below checks that importing the module loads nothing through it."""
    tree = ast.parse(source)
    lazy = {id(node) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "__getattr__"
            for node in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if id(node) in lazy:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: one level is the package itself
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and \
                isinstance(node.args[0].value, str):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return sorted(found)


def violations(source: str, forbidden: tuple[str, ...]) -> list[str]:
    "The imports of `source` that are, or live under, a forbidden module."
    return [f"line {line}: {name}" for line, name in imported_modules(source)
            if any(name == f or name.startswith(f + ".") for f in forbidden)]


def test_the_check_sees_every_kind_of_import():
    source = ("import torch\n"
              "def draw():\n    import matplotlib.pyplot as plt\n"
              "from .plotting import plot_image_grid\n"
              "from . import plotting\n"
              "import importlib\nmod = importlib.import_module('matplotlib')\n"
              "def __getattr__(name):\n    return importlib.import_module('flowpp.plotting')\n")
    found = violations(source, PLOTTING)
    assert [v.split(":")[0] for v in found] == ["line 3", "line 4", "line 4", "line 5", "line 7"], found
    assert not violations("import torch\nfrom .core import Flow\n", PLOTTING)
    assert violations("from .model import FlowPlusPlus\n", FORBIDDEN["data"])


@pytest.mark.parametrize("name", sorted(FORBIDDEN))
def test_module_imports_no_plotting(name):
    path = ROOT / "flowpp" / f"{name}.py"
    assert path.exists(), f"flowpp/{name}.py is gone: update the list of the algorithm's modules in this test"
    bad = violations(path.read_text(encoding="utf-8"), FORBIDDEN[name])
    assert not bad, (f"flowpp.{name} imports {bad}: drawing belongs in the notebook that draws (unexported) or in "
                     "flowpp.plotting, which no algorithm module imports")


def _loaded_in_fresh_interpreter(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.split()


def test_algorithm_loads_no_plotting_and_no_trainer():
    # the package's __init__ imports the trainer (which draws sample grids), so it is bypassed here: an empty
    # package object whose modules are then imported one by one, as a user importing flowpp.model would get them
    # if the package exported nothing at its top level
    code = ("import sys, types; pkg = types.ModuleType('flowpp'); pkg.__path__ = [" + repr(str(ROOT / "flowpp")) + "]; "
            "sys.modules['flowpp'] = pkg; import importlib; "
            + "; ".join(f"importlib.import_module('flowpp.{m}')" for m in (*ALGORITHM, "data"))
            + "; print(len([m for m in sys.modules if m.startswith('flowpp.')]), "
              "*sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib' or m in ('flowpp.plotting', 'flowpp.train')))")
    loaded = _loaded_in_fresh_interpreter(code)
    assert int(loaded[0]) >= len(ALGORITHM) + 1 and loaded[1:] == [], loaded[1:]


def test_import_flowpp_loads_no_plotting_library():
    loaded = _loaded_in_fresh_interpreter(
        "import sys, flowpp; print('ok', *sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))")
    assert loaded == ["ok"], loaded
