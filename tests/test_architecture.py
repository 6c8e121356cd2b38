"""The package layering (README "Layout") and where the project's own modules are imported, checked on the source.

The import contracts are in ``pyproject.toml`` (``[tool.importlinter]``): import-linter reads the static
import graph, so a module that imports from a layer above it, or two modules of one package that import
each other, fail here whether the import is at the top or inside a function.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINTED = ("vlsa", "tune_spaces")
PROJECT = ("vlsa", "tune_spaces", "cluster")
LAZY_ALLOWED = {
    "vlsa.tune.callback": "subclasses ray.tune.Callback at module level; loaded only when a sweep runs",
    "vlsa.tune.search": "subclasses Ray Tune's OptunaSearch at module level; loaded only when a sweep runs",
}
"""Project modules that may be imported inside a function, and why (each imports a heavy optional
library at module level). Heavy libraries themselves (ray, deepspeed, mlflow, diffusers, transformers)
stay lazy in the library so that ``import vlsa`` loads the config schema only."""


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    env = os.environ | {"PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_an_import_from_a_higher_layer_breaks_the_contract(tmp_path):
    for name in (*LINTED, "pyproject.toml"):
        source = REPO / name
        copy = shutil.copytree if source.is_dir() else shutil.copy
        copy(source, tmp_path / name)
    storage = tmp_path / "vlsa" / "io" / "storage.py"
    storage.write_text(storage.read_text() + "\n\ndef _upward():\n    from vlsa.train import loop\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "vlsa.io is not allowed to import vlsa.train" in result.stdout


def test_every_package_of_vlsa_has_a_layer():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c["layers"] for c in config["contracts"] if c["type"] == "layers")
    named = {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}
    modules = {f"vlsa.{p.stem}" for p in (REPO / "vlsa").iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert modules | {"tune_spaces"} == named


def lazy_project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a project module inside a function of ``path``."""
    found = set()
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] if node.level == 0 else ["(relative)"]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found |= {(node.lineno, name) for name in names if name.split(".")[0] in (*PROJECT, "(relative)")}
    return sorted(found)


def test_the_project_imports_its_own_modules_at_the_top():
    found = [f"{path.relative_to(REPO)}:{line} imports {module} inside a function"
             for package in LINTED for path in sorted((REPO / package).rglob("*.py"))
             for line, module in lazy_project_imports(path) if module not in LAZY_ALLOWED]
    assert not found, "\n".join(found)


def test_the_lint_finds_an_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import ray\n\n\ndef f():\n    import deepspeed\n    from vlsa.io import storage\n\n"
                      "    def g():\n        import vlsa.config\n")
    assert lazy_project_imports(module) == [(6, "vlsa.io"), (9, "vlsa.config")]


def test_no_private_ray_module_is_imported():
    private = []
    for package in (*LINTED, "ray_jobs"):
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                         else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                private += [f"{path.relative_to(REPO)}:{node.lineno} {name}" for name in names if _private_ray(name)]
    assert not private, "\n".join(private)


def _private_ray(module: str) -> bool:
    parts = module.split(".")
    return parts[0] == "ray" and any(part.startswith("_") or part == "impl" for part in parts[1:])
