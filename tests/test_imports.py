"""Every module imports on its own, first: an import cycle only shows when its modules load in one order."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CODE = """
import importlib, pkgutil, sys
names = set()
for package in ("mbias", "mbias.probes", "mbias.diagnose", "mbias.finetune", "mbias.reports"):  # mapped folders
    module = importlib.import_module(package)
    names |= {package} | {m.name for m in pkgutil.walk_packages(module.__path__, package + ".")}
names = sorted(n for n in names if not n.endswith("__main__"))
failed = []
for name in names:
    for loaded in [k for k in sys.modules if k == "mbias" or k.startswith("mbias.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 (reported below, with the module that failed)
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print(len(names))
print("\\n".join(failed))
raise SystemExit(1 if failed else 0)
"""


def test_every_module_imports_first():
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert int(done.stdout.splitlines()[0]) >= 60


# Issue 29, the house: the top-level packages import one way. (folder, the package it must not import, why)
FORBIDDEN = [
    ("reports", "mbias.diagnose", "reports read an audit folder; the results store and the verdict live in the core "
                                  "(mbias/store.py, mbias/verdict.py)"),
    ("mbias/models", "mbias.zoo", "the loader knows no zoo; zoo:NAME is resolved by mbias/refs.py"),
    ("finetune", "mbias.probes", "the shared two-player Shapley formula lives in mbias/shapley.py; the audit's probes "
                                 "are reached through mbias.diagnose"),
]
# the folder each package is written in (pyproject.toml's package-dir), for relative imports
PACKAGE_OF = {"probes": "mbias.probes", "diagnose": "mbias.diagnose", "finetune": "mbias.finetune",
              "reports": "mbias.reports", "mbias": "mbias"}


def _module_of(path: Path) -> str:
    """The dotted module name of a source file (``finetune/recipes/poe.py`` -> ``mbias.finetune.recipes.poe``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join([PACKAGE_OF[parts[0]], *parts[1:]])


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, at any depth (function-level imports count): ``import a.b``,
    ``from a.b import c`` (as ``a.b`` and ``a.b.c``, since ``c`` may be a module), relative imports resolved
    against the file's package, and ``importlib.import_module("a.b")`` with a literal name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_of(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_of(path)[:-len(".__init__")]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return sorted(found)


def forbidden_imports() -> list[str]:
    problems = []
    for folder, banned, why in FORBIDDEN:
        for path in sorted((ROOT / folder).rglob("*.py")):
            lines = set()
            for line, module in imported_modules(path):
                if (module == banned or module.startswith(banned + ".")) and line not in lines:
                    lines.add(line)
                    problems.append(f"{path.relative_to(ROOT)}:{line} imports {module} ({folder}/ must not import "
                                    f"{banned}: {why})")
    return problems


def test_the_top_level_packages_import_one_way():
    problems = forbidden_imports()
    assert not problems, "\n".join(problems)


def test_the_import_check_sees_every_form_of_import(tmp_path, monkeypatch):
    """The check itself: each way of writing an import of a forbidden package is caught, with its line."""
    fake = tmp_path / "reports"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "bad.py").write_text(
        "import json\n"
        "from mbias.diagnose.store import all_records\n"
        "import mbias.diagnose.verdict\n"
        "from mbias import diagnose\n"
        "def f():\n"
        "    from ..diagnose import runner\n"
        "    return importlib.import_module('mbias.diagnose.config')\n"
        "from mbias.stats import bootstrap_mean\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    problems = forbidden_imports()
    assert [p.split(" ")[0] for p in problems] == [f"reports/bad.py:{n}" for n in (2, 3, 4, 6, 7)], problems
