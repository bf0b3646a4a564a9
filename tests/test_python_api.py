"""mbias from Python: ``mbias.audit`` on a model object equals the CLI on the same model and data; the result
saves the CLI's folder, compares, shows in a notebook; the model's modes are restored; ``mbias.finetune``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mbias
from mbias.cli import main

FAST = {"probe_config": {"mm_shap": {"n_permutations": 4}, "degradation": {"draws": 2, "rates": [0.0, 0.5]},
                         "pdm": {"max_new_tokens": 2}}}
N = 5


@pytest.fixture(scope="module")
def tiny_llava(tiny_model_dir):
    return tiny_model_dir("llava")


@pytest.fixture(scope="module")
def jsonl_data(tmp_path_factory):
    """A synthetic split exported as data.jsonl + PNGs, and the same records as a list of dicts (absolute image
    paths, as the JSONL loader resolves them)."""
    out = tmp_path_factory.mktemp("data")
    assert main(["synth", "shapes-p90/test-cp", "--out", str(out)]) == 0
    lines = (out / "data.jsonl").read_text().splitlines()[:N]
    (out / "head.jsonl").write_text("".join(line + "\n" for line in lines))
    records = [json.loads(line) for line in lines]
    for r in records:
        r["image"] = str(out / r["image"])
    return out / "head.jsonl", records


@pytest.fixture(scope="module")
def model_and_processor(tiny_llava):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(tiny_llava), AutoProcessor.from_pretrained(tiny_llava)


def _without_run_details(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in ("provenance", "data")}


def test_audit_of_a_model_object_equals_the_cli(tiny_llava, jsonl_data, model_and_processor, tmp_path):
    path, records = jsonl_data
    config = tmp_path / "fast.yaml"
    config.write_text(json.dumps(FAST))  # JSON is YAML
    assert main(["audit", "--model", tiny_llava, "--data", str(path), "--out", str(tmp_path / "cli"),
                 "--config", str(config), "--no-progress"]) == 0
    cli = mbias.AuditResult.load(tmp_path / "cli")

    model, processor = model_and_processor
    result = mbias.audit(model, processor, records, config=FAST, progress=False)
    assert result.records == cli.records
    assert _without_run_details(result.summary) == _without_run_details(cli.summary)
    assert result.summary["model"] == tiny_llava  # the object's name_or_path
    assert result.verdict == cli.verdict and result.out is None


def test_result_saves_the_cli_folder_compares_and_shows(tiny_llava, jsonl_data, model_and_processor, tmp_path):
    from PIL import Image

    _, records = jsonl_data
    model, processor = model_and_processor
    in_memory = [{**r, "image": Image.open(r["image"]).convert("RGB")} for r in records]  # PIL images
    before = mbias.audit(model, processor, in_memory, probes="modality_shapley,conflict", progress=False)
    assert set(before.summary["probes"]) == {"modality_shapley", "conflict"}
    folder = before.save(tmp_path / "saved")
    for name in ("manifest.json", "results.jsonl", "summary.json", "report.html", "report.md", "model_card.md"):
        assert (folder / name).exists(), name
    assert main(["report", str(folder)]) == 0  # the CLI reads what save wrote
    again = mbias.AuditResult.load(folder)
    assert again.records == before.records and again.summary == before.summary

    after = mbias.audit(tiny_llava, data=in_memory, probes="modality_shapley,conflict", seed=1, progress=False)
    comparison = before.compare(after)
    assert comparison.headline and {r["key"] for r in comparison.rows} >= {"correct", "language_share"}
    assert comparison.to_dict()["paired"] is True
    html = comparison.save(tmp_path / "cmp" / "compare.html")
    assert html.exists() and (tmp_path / "cmp" / "audit-after" / "summary.json").exists()
    card = before._repr_html_()
    assert before.verdict["dominant_modality"] is None or "language share" in card
    assert "<table>" in card and "accuracy" in card
    frame = before.to_pandas()
    assert len(frame) == len(records) and "probes.modality_shapley.language_share" in frame.columns


def test_audit_restores_every_module_mode_and_copies_nothing(model_and_processor, jsonl_data, monkeypatch):
    import torch
    from transformers import PreTrainedModel

    model, processor = model_and_processor
    model.train()
    model.model.vision_tower.eval()  # a part kept in eval on purpose
    modes = [m.training for m in model.modules()]
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    created = []
    monkeypatch.setattr(PreTrainedModel, "__init__",
                        lambda self, *a, **k: created.append(type(self)) or pytest.fail("a model was created"))
    mbias.audit(model, processor, jsonl_data[1][:2], probes="modality_shapley", progress=False)
    assert [m.training for m in model.modules()] == modes and not created
    assert all(torch.equal(weights[n], p) for n, p in model.named_parameters())
    model.eval()


def test_audit_of_a_peft_model_scores_with_its_adapter(model_and_processor, jsonl_data):
    import torch
    from peft import LoraConfig, get_peft_model

    model, processor = model_and_processor
    records = jsonl_data[1][:2]
    plain = mbias.audit(model, processor, records, probes="modality_shapley", progress=False)
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(target_modules=["multi_modal_projector.linear_1"],
                                                  init_lora_weights=False))
    try:
        adapted = mbias.audit(peft_model, processor, records, probes="modality_shapley", progress=False)
    finally:
        peft_model.unload()  # leave the shared fixture's model as it was
    assert adapted.summary["adapter"]["peft_type"] == "LORA"
    assert [r["probes"] for r in adapted.records] != [r["probes"] for r in plain.records]


def test_an_out_folder_resumes_the_same_model_and_refuses_a_changed_one(model_and_processor, jsonl_data, tmp_path):
    import torch

    from mbias.errors import ConfigError

    model, processor = model_and_processor
    records = jsonl_data[1][:2]
    first = mbias.audit(model, processor, records, probes="modality_shapley", out=tmp_path / "a", progress=False,
                        report=False)
    again = mbias.audit(model, processor, records, probes="modality_shapley", out=tmp_path / "a", progress=False,
                        report=False)
    assert again.records == first.records and first.out == Path(tmp_path / "a")
    param = next(model.model.multi_modal_projector.parameters())
    with torch.no_grad():
        param.add_(1.0)
    try:
        with pytest.raises(ConfigError, match="different model"):
            mbias.audit(model, processor, records, probes="modality_shapley", out=tmp_path / "a", progress=False)
    finally:
        with torch.no_grad():
            param.sub_(1.0)


def test_bad_input_is_refused_clearly(model_and_processor):
    from mbias.errors import ConfigError, DataError

    model, processor = model_and_processor
    with pytest.raises(ConfigError, match="needs data"):
        mbias.audit(model, processor)
    with pytest.raises(ConfigError, match="processor"):
        mbias.audit(model, None, [{"image": "x.png", "question": "q", "answer": "a"}])
    with pytest.raises(DataError, match="question"):
        mbias.audit(model, processor, [{"id": "1", "image": "x.png", "answer": "a"}])


def test_public_names_are_exported_lazily():
    import subprocess
    import sys

    code = ("import sys, mbias; assert 'torch' not in sys.modules; "
            "names = [n for n in mbias.__all__ if n != '__version__']; "
            "assert all(getattr(mbias, n) is not None for n in names)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_finetune_a_model_object_in_place_with_a_monitor(tiny_llava, jsonl_data, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_llava)
    processor = AutoProcessor.from_pretrained(tiny_llava)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = mbias.finetune(model, processor, "synth:shapes-p90/train", recipe="poe", max_steps=2,
                            per_device_train_batch_size=4, max_train_samples=16, eval_samples=8,
                            monitor_data=jsonl_data[1], monitor_every=2, monitor_samples=3, progress=False)
    assert isinstance(result.model, PeftModel) and result.model.get_base_model() is model and result.out is None
    frozen = {n.replace(".base_layer", ""): p for n, p in model.named_parameters() if "lora_" not in n}
    assert frozen.keys() == before.keys() and all(torch.equal(before[n], p) for n, p in frozen.items())
    assert [h["step"] for h in result.monitor] == [0, 2]
    assert any("mbias/accuracy" in e for e in result.trainer.state.log_history)
    after = mbias.audit(result.model, processor, jsonl_data[1][:3], probes="modality_shapley", progress=False)
    assert after.summary["adapter"]["peft_type"] == "LORA"
