"""Every module imports on its own, first: an import cycle only shows when its modules load in one order."""

from __future__ import annotations

import subprocess
import sys

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
