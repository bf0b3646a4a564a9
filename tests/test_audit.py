"""Audit end to end on a tiny model: outputs, schema, resume after kill -9, escaping, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from mbias.cli import main
from mbias.probes import DEFAULT_PROBES

FAST = """
probe_config:
  mm_shap: {n_permutations: 4}
  degradation: {draws: 2, rates: [0.0, 0.5]}
  pdm: {max_new_tokens: 2}
"""


@pytest.fixture(scope="module")
def tiny_llava(tiny_model_dir):
    return tiny_model_dir("llava")


@pytest.fixture(scope="module")
def fast_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "fast.yaml"
    path.write_text(FAST)
    return str(path)


def _audit(model, data, out, *extra):
    return main(["audit", "--model", model, "--data", data, "--out", str(out), "--no-progress", *extra])


def test_audit_writes_every_output_and_a_schema_valid_summary(tiny_llava, fast_config, tmp_path, capsys):
    import jsonschema

    out = tmp_path / "audit"
    assert _audit(tiny_llava, "synth:shapes-p90/test-cp", out, "--max-samples", "5", "--config", fast_config) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "language share" in line and "report.html" in line
    for name in ("manifest.json", "results.jsonl", "summary.json", "report.html", "report.md", "model_card.md"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    schema = json.loads((Path(__file__).parents[1] / "reports" / "summary.schema.json").read_text())
    jsonschema.validate(summary, schema)
    assert summary["n_samples"] == 5 and set(summary["probes"]) == set(DEFAULT_PROBES)
    assert summary["verdict"]["dominant_modality"] in ("language", "vision", "balanced")
    assert summary["provenance"]["versions"]["transformers"]
    card = ModelCard((out / "model_card.md").read_text())  # valid model-card metadata, as the hub reads it
    metrics = {r.metric_type: r for r in card.data.eval_results}
    assert {"accuracy", "language_share", "follows_wording", "t_shap", "multimodal_gain"} <= set(metrics)
    share = summary["probes"]["modality_shapley"]["language_share"]
    assert metrics["language_share"].metric_args["ci95"] == [round(x, 4) for x in share["ci95"]]
    assert metrics["accuracy"].dataset_split == "test-cp" and card.data.base_model is None
    assert list((out / "plots").glob("*.png"))


def test_report_rerenders_from_json_without_torch(tiny_llava, fast_config, tmp_path):
    out = tmp_path / "audit"
    assert _audit(tiny_llava, "synth:shapes-p50/test-cp", out, "--max-samples", "3", "--config", fast_config,
                  "--probes", "modality_shapley,ablation") == 0
    (out / "report.html").unlink()
    code = ("import sys; sys.modules['torch'] = None\n"  # any torch import would now fail
            "from mbias.cli import main; raise SystemExit(main(['report', sys.argv[1]]))")
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, capture_output=True)
    assert (out / "report.html").exists()


def test_compare_reports_paired_differences(tiny_llava, fast_config, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out, baseline in ((a, "blank"), (b, "noise")):
        assert _audit(tiny_llava, "synth:shapes-p90/test-cp", out, "--max-samples", "4", "--config", fast_config,
                      "--probes", "modality_shapley,conflict,ablation", "--image-baseline", baseline) == 0
    assert main(["report", str(a), "--compare", str(b), "--out", str(tmp_path / "cmp.html")]) == 0
    page = (tmp_path / "cmp.html").read_text()
    assert "paired over the same samples" in page and "language share" in page
    assert page.count('class="verdict ') == 2 and "After: " in page and "follows the wording" in page
    assert page.count("<img") >= 4  # the key plots, before and after
    assert (tmp_path / "cmp.md").exists()


def test_compare_marks_each_measure_by_its_direction():
    from mbias.reports.compare import compare_rows

    def rec(i, correct, follows, share):
        return {"id": str(i), "image_key": str(i), "correct": correct,
                "probes": {"conflict": {"follows_text": follows}, "modality_shapley": {"language_share": share}}}

    before = [rec(i, 0.0, 1.0, 0.8) for i in range(30)]
    after = [rec(i, 1.0, 0.0, 0.6) for i in range(30)]
    rows = {r["key"]: r["judgement"] for r in compare_rows(before, after, "language")[0]}
    assert rows == {"correct": "better", "follows_text": "better", "language_share": "better"}
    rows = {r["key"]: r["judgement"] for r in compare_rows(before, after, "vision")[0]}
    assert rows["language_share"] == "worse"  # away from the image for a model that leaned on it
    rows = {r["key"]: r["judgement"] for r in compare_rows(after, after, "language")[0]}
    assert set(rows.values()) == {"no clear change"}


def test_the_audited_adapter_is_named_in_every_output(tiny_llava, fast_config, tmp_path):
    from mbias.finetune.config import FinetuneConfig
    from mbias.finetune.run import run_finetune

    ft = run_finetune(tiny_llava, "synth:shapes-p90/train", tmp_path / "my-adapter", progress=False,
                      config=FinetuneConfig(recipe="poe", max_steps=2, per_device_train_batch_size=4,
                                            max_train_samples=8))
    before, after = tmp_path / "before", tmp_path / "after"
    args = ("--max-samples", "3", "--config", fast_config, "--probes", "modality_shapley,conflict")
    assert _audit(tiny_llava, "synth:shapes-p90/test-cp", before, *args) == 0
    assert _audit(tiny_llava, "synth:shapes-p90/test-cp", after, "--adapter", str(ft), *args) == 0
    summary = json.loads((after / "summary.json").read_text())
    assert summary["adapter"]["path"] == str(ft) and summary["adapter"]["recipe"] == "poe"
    assert summary["adapter"]["steps"] == 2 and summary["adapter"]["base_model"] == tiny_llava
    assert json.loads((before / "summary.json").read_text())["adapter"] is None
    assert main(["report", str(before), "--compare", str(after), "--out", str(tmp_path / "cmp.html")]) == 0
    for page in (after / "report.html", after / "report.md", after / "model_card.md", tmp_path / "cmp.html"):
        text = page.read_text()
        assert str(ft) in text and "poe, 2 steps" in text, page
    card = ModelCard((after / "model_card.md").read_text())
    assert card.data.base_model == tiny_llava and card.data.library_name == "peft"


def _jsonl(tmp_path, records, images=True):
    from PIL import Image

    if images:
        Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    path = tmp_path / "data.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_dataset_text_is_escaped_in_the_html(tiny_llava, fast_config, tmp_path):
    evil_q = "What colour is <script>alert(1)</script> the <img src=x onerror=alert(2)> shape?"
    data = _jsonl(tmp_path, [
        {"id": "<b>x</b>", "image": "red.png", "question": evil_q, "answer": "red", "choices": ["red", "<i>g</i>"],
         "category": "<svg onload=alert(3)>"},
        {"id": "y", "image": "red.png", "question": "What colour?", "answer": "red", "choices": ["red", "blue"]},
    ])
    out = tmp_path / "audit"
    assert _audit(tiny_llava, str(data), out, "--config", fast_config) == 0
    page = (out / "report.html").read_text()
    assert "<script>alert" not in page and "<img src=x" not in page and "<svg onload" not in page
    assert "&lt;script&gt;" in page or "&lt;svg onload" in page


@pytest.mark.parametrize("case,expected", [
    ("missing_image", "does not exist"),
    ("corrupt_image", "not a readable image"),
    ("malformed_line", "line 2: not valid JSON"),
    ("unknown_probe", "did you mean 'mm_shap'"),
    ("unknown_model", "no model folder"),
])
def test_bad_input_is_one_line_and_writes_nothing(case, expected, tiny_llava, tmp_path, capsys):
    good = {"id": "a", "image": "red.png", "question": "What colour?", "answer": "red"}
    records = [good]
    model, probes = tiny_llava, "modality_shapley"
    if case == "missing_image":
        records.append({**good, "id": "b", "image": "gone.png"})
    elif case == "corrupt_image":
        (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
        records.append({**good, "id": "b", "image": "bad.png"})
    elif case == "malformed_line":
        records.append('{"id": "b", "image": ')
    elif case == "unknown_probe":
        probes = "mm_shapp"
    elif case == "unknown_model":
        model = str(tmp_path / "no-model")
    data = _jsonl(tmp_path, records)
    out = tmp_path / "audit"
    assert _audit(model, str(data), out, "--probes", probes) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("mbias: error:") and expected in err
    assert "Traceback" not in err
    assert not (out / "summary.json").exists() and not (out / "manifest.json").exists()


def test_out_of_memory_halves_the_batch_then_fails_clearly(tiny_llava, tmp_path, monkeypatch, capsys):
    import torch

    from mbias.models.scoring import ScoringMixin

    original = ScoringMixin._first_token_scores

    def flaky(self, prepared, ids, feats, tokens, rows):
        if len(rows) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, prepared, ids, feats, tokens, rows)

    monkeypatch.setattr(ScoringMixin, "_first_token_scores", flaky)
    out = tmp_path / "ok"
    assert _audit(tiny_llava, "synth:shapes-p90/test-cp", out, "--max-samples", "2",
                  "--probes", "modality_shapley") == 0
    monkeypatch.setattr(ScoringMixin, "_first_token_scores",
                        lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("simulated")))
    out = tmp_path / "oom"
    assert _audit(tiny_llava, "synth:shapes-p90/test-cp", out, "--max-samples", "2",
                  "--probes", "modality_shapley") == 2
    err = capsys.readouterr().err
    assert "out of memory" in err and "Traceback" not in err
    assert not (out / "summary.json").exists()


def test_a_different_config_on_an_existing_folder_is_refused(tiny_llava, tmp_path, capsys):
    out = tmp_path / "audit"
    args = ("--max-samples", "2", "--probes", "modality_shapley")
    assert _audit(tiny_llava, "synth:shapes-p90/test-cp", out, *args) == 0
    assert _audit(tiny_llava, "synth:shapes-p90/test-cp", out, *args, "--image-baseline", "noise") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _audit(tiny_llava, "synth:shapes-p90/test-cp", out, *args, "--image-baseline", "noise",
                  "--overwrite") == 0


def test_a_rebuilt_zoo_model_does_not_resume_the_old_models_results(monkeypatch):
    import dataclasses

    import mbias.zoo
    from mbias.diagnose.config import AuditConfig

    config = AuditConfig()  # an unpinned build (a pinned one's identity is its weights' digest: tests/test_zoo.py)
    before = config.fingerprint("zoo:shapes-p90-seed31", None, "synth:shapes-p90/test-cp")
    entry = mbias.zoo.zoo_entry("shapes-p90-seed31")
    retrained = dataclasses.replace(entry, train=dataclasses.replace(entry.train, steps=entry.train.steps + 1))
    monkeypatch.setattr(mbias.zoo, "zoo_entry", lambda name: retrained)
    assert config.fingerprint("zoo:shapes-p90-seed31", None, "synth:shapes-p90/test-cp") != before


def test_torn_last_line_is_repaired(tmp_path):
    from mbias.store import read_records

    path = tmp_path / "results.jsonl"
    path.write_text('{"id": "a", "index": 0}\n{"id": "b", "ind')
    assert [r["id"] for r in read_records(path, repair=True)] == ["a"]
    assert path.read_text() == '{"id": "a", "index": 0}\n'


def _numbers(out: Path) -> tuple[list, dict]:
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("provenance", "config", "data", "model", "methods"):
        summary.pop(key)
    return records, summary


def test_kill_9_then_rerun_equals_an_uninterrupted_run(tiny_llava, fast_config, tmp_path):
    args = ["-m", "mbias", "audit", "--model", tiny_llava, "--data", "synth:shapes-p90/test-cp",
            "--max-samples", "12", "--config", fast_config, "--no-progress", "--no-report"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    subprocess.run([sys.executable, *args, "--out", str(whole)], check=True, env=env, capture_output=True)
    proc = subprocess.Popen([sys.executable, *args, "--out", str(resumed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = resumed / "results.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if results.exists() and results.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = results.read_text().count("\n")
    assert 3 <= done_before < 12, "the kill came too late to test resuming"
    assert not (resumed / "summary.json").exists()
    subprocess.run([sys.executable, *args, "--out", str(resumed)], check=True, env=env, capture_output=True)
    assert _numbers(resumed) == _numbers(whole)


@pytest.mark.slow
def test_two_processes_under_accelerate_share_the_work(tiny_llava, fast_config, tmp_path, accelerate_launch):
    single, double = tmp_path / "single", tmp_path / "double"
    common = ["audit", "--model", tiny_llava, "--data", "synth:shapes-p90/test-cp", "--max-samples", "6",
              "--probes", "modality_shapley,ablation", "--no-progress", "--no-report"]
    assert main([*common, "--out", str(single)]) == 0
    # accelerate's --cpu flag runs one process; --multi_gpu starts two, which find no GPU and use gloo
    cmd = [*accelerate_launch(), "-m", "mbias", *common, "--out", str(double)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list(double.glob("results.rank*"))
    manifest = json.loads((double / "manifest.json").read_text())
    assert manifest["provenance"]["world_size"] == 2
    # accelerate runs each process with one thread, so float sums may differ in the last bits
    _assert_close(_numbers(double), _numbers(single))


def _assert_close(a, b, path="") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-4), path  # ratios of small phis amplify float noise
    else:
        assert a == b, path
