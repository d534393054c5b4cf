"""A production install (`pip install .`, no extras) carries no sandbox package, and the
production code loads without them: the stand-ins (moto, asyncssh, the GCS emulator) are the
`[sandbox]` extra, which only the demo and the tests install."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = Path(__file__).resolve().parents[1]
SANDBOX_DISTRIBUTIONS = {"moto", "asyncssh", "gcp-storage-emulator"}
SANDBOX_MODULES = ("moto", "asyncssh", "gcp_storage_emulator", "mm_assets.sandbox")


def _closure(requirements: list[str], extras: frozenset[str] = frozenset()) -> set[str]:
    """Every distribution `requirements` pull in, from the installed metadata."""
    seen: set[str] = set()
    todo = [(Requirement(r), extras) for r in requirements]
    while todo:
        req, parent_extras = todo.pop()
        environment = [{"extra": e} for e in parent_extras or {""}]
        if req.marker and not any(req.marker.evaluate(env) for env in environment):
            continue
        name = canonicalize_name(req.name)
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        todo += [(Requirement(r), frozenset(req.extras)) for r in metadata.requires(name) or []]
    return {k.split("[")[0] for k in seen}


def test_the_base_install_pulls_in_no_sandbox_package() -> None:
    declared = metadata.requires("mm-assets") or []
    base = [r for r in declared if "extra ==" not in r]
    installed_base = _closure(base)
    assert "dagster" in installed_base
    assert not installed_base & SANDBOX_DISTRIBUTIONS
    # ... and the extras are where the demo and tests get them.
    sandbox = [r.split(";")[0] for r in declared if 'extra == "sandbox"' in r]
    assert {canonicalize_name(Requirement(r).name) for r in sandbox} == SANDBOX_DISTRIBUTIONS


def _module_level_imports(path: Path) -> set[str]:
    """Modules the file imports when it is imported: top-level statements, including those
    inside `if` / `try` / class bodies, but not inside functions (imported when called)."""
    found: set[str] = set()
    todo: list[ast.AST] = list(ast.parse(path.read_text(), filename=str(path)).body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
        else:
            todo.extend(ast.iter_child_nodes(node))
    return found


def _is_sandbox(module: str) -> bool:
    return any(module == m or module.startswith(f"{m}.") for m in SANDBOX_MODULES)


def test_production_modules_import_no_sandbox_at_module_level() -> None:
    offenders: dict[str, set[str]] = {}
    for path in sorted((PROJECT / "mm_assets").rglob("*.py")):
        rel = path.relative_to(PROJECT).as_posix()
        if not rel.startswith("mm_assets/sandbox/"):
            hits = {m for m in _module_level_imports(path) if _is_sandbox(m)}
            if hits:
                offenders[rel] = hits
    # The sandbox's delivery resource is imported lazily, and only when it is chosen.
    assert offenders == {}


BLOCK_AND_LOAD = """
import importlib.abc, sys
BLOCKED = ("moto", "asyncssh", "gcp_storage_emulator")
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed)")
sys.meta_path.insert(0, Absent())
from mm_assets.definitions import defs
defs.resolve_all_job_defs()
print(len(list(defs.resolve_asset_graph().get_all_asset_keys())))
"""


def test_definitions_load_with_the_sandbox_packages_absent(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_AND_LOAD],
        cwd=PROJECT,
        env={"PATH": "/usr/bin:/bin", "DAGSTER_HOME": str(tmp_path), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) >= 5  # the five assets of the graph
