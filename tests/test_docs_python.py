"""docs/python.md's code blocks run, in order, against a tiny model: the page's model id and sizes are swapped
for small ones here, and nothing else changes, so an example that breaks fails CI."""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).parents[1] / "docs" / "python.md"
SMALLER = {'"max_samples": 100': '"max_samples": 4', "max_steps=100": "max_steps=2", "max_samples=256": "max_samples=8",
           "per_device_train_batch_size=32": "per_device_train_batch_size=4",
           '"synth:shapes-p90/val", every=50)': '"synth:shapes-p90/val", every=1, max_samples=3)'}


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_python_page_runs(tiny_model_dir, tmp_path, monkeypatch):
    code = "\n".join(blocks()).replace("llava-hf/llava-1.5-7b-hf", tiny_model_dir("llava"))
    for big, small in SMALLER.items():
        assert big in code, f"docs/python.md no longer says {big!r}; update SMALLER"
        code = code.replace(big, small)
    monkeypatch.chdir(tmp_path)  # the page writes audit-before/, compare.html, run/
    namespace: dict = {}
    exec(compile(code, str(PAGE), "exec"), namespace)  # noqa: S102 (our own documentation)
    assert (tmp_path / "audit-before" / "report.html").exists() and (tmp_path / "compare.html").exists()
    assert namespace["curve"] and namespace["tuned"].monitor == []
    assert len(namespace["table"]) == 4
