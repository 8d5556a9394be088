"""The house rules that import-linter cannot see (ARCHITECTURE.md): no function-local import of
thpcore (they exist only to dodge a cycle), nothing imported from the root package but the
engine, and every module importable on its own (no module-level code depends on import order)."""

import ast
import pathlib
import subprocess
import sys

import pytest

import thpcore

SRC = pathlib.Path(thpcore.__file__).parent
MODULES = sorted(
    ".".join(("thpcore",) + p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
    for p in SRC.rglob("*.py"))


def _thpcore_imports(tree: ast.Module):
    """(node, top_level) for every import of a thpcore module; TYPE_CHECKING blocks count as
    top level (type-only)."""
    top = set()
    for node in tree.body:
        top.add(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            top.update(node.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "thpcore":
            yield node, node in top
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "thpcore" for a in node.names):
            yield node, node in top


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_function_local_or_root_imports(path):
    tree = ast.parse(path.read_text())
    for node, top_level in _thpcore_imports(tree):
        where = f"{path.relative_to(SRC)}:{node.lineno}"
        assert top_level, f"{where}: function-local import of thpcore ({ast.unparse(node)})"
        if isinstance(node, ast.ImportFrom) and node.module == "thpcore":
            names = {a.name for a in node.names}
            # The root re-exports the public API of every floor: importing it from inside the
            # package would hide an upward import from import-linter.
            allowed = {"_engine"} | ({"__version__"} if path.parent.name == "cli" else set())
            assert names <= allowed | {p.stem for p in SRC.iterdir()}, \
                f"{where}: imports {sorted(names - allowed)} from the thpcore root"
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name != "thpcore" or path.parent.name == "cli", \
                    f"{where}: `import thpcore` (the root) outside the CLIs"


def test_every_module_imports_first():
    """Each module imported first in a clean thpcore namespace (the engine kept: an extension
    module cannot be loaded twice)."""
    code = f"""
import importlib, sys
import thpcore._engine
bad = []
for name in {MODULES!r}:
    for m in [m for m in sys.modules if m.startswith("thpcore") and m != "thpcore._engine"]:
        del sys.modules[m]
    try:
        importlib.import_module(name)
    except Exception as exc:
        bad.append(f"{{name}}: {{exc!r}}")
print("\\n".join(bad))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", out.stdout
    assert len(MODULES) > 40


def test_the_engine_and_the_python_side_agree_on_each_shared_constant():
    """Constants the compiled engine must also hold (a cdef cannot import them): one Python
    definition each, checked against the engine's copy."""
    from thpcore import _engine, constants
    from thpcore.mm import mm_types
    assert _engine.PY_MAX_PAGE_ORDER == constants.MAX_PAGE_ORDER
    assert _engine.PY_PTE_PRESENT == 1 and mm_types.PTE_PFN_SHIFT == 4
    assert (_engine.PY_PTE_KIND_SWAP, _engine.PY_PTE_KIND_ZERO) == (2, 4)
    assert max(_engine.PY_PTE_KIND_SWAP, _engine.PY_PTE_KIND_ZERO,
               _engine.PY_PTE_GUARD) <= mm_types.PTE_KIND_MASK
