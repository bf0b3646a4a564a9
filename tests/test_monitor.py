"""BiasMonitorCallback on a plain transformers.Trainer: mbias/ keys in log_history at the expected steps, the same
loss curve, weights and modes as the run without it, no second model object, and the audit's own numbers."""

from __future__ import annotations

import pytest
import torch

import mbias
from mbias.data import load_data
from mbias.finetune.data import EncodedDataset
from mbias.models.batching import collate
from mbias.models.loading import wrap_model

HELD_OUT = "synth:shapes-p90/val"


def _trainer(model_dir, out, *, steps=4):
    from transformers import AutoModelForImageTextToText, AutoProcessor, Trainer, TrainingArguments

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    scorer = wrap_model(model, processor)
    train = EncodedDataset(scorer, load_data("synth:shapes-p90/train", max_samples=32).examples)
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, logging_steps=1,
                             learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no", seed=0,
                             remove_unused_columns=False, disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=train, processing_class=processor,
                   data_collator=lambda encoded: dict(collate(scorer, encoded).model_inputs))


def _losses(trainer):
    return [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]


def test_callback_logs_at_its_steps_and_leaves_training_as_it_was(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    plain = _trainer(tiny_model_dir("llava"), tmp_path / "plain")
    plain.train()

    watched = _trainer(tiny_model_dir("llava"), tmp_path / "watched")
    callback = mbias.BiasMonitorCallback(watched, HELD_OUT, every=2, max_samples=6)
    watched.add_callback(callback)
    created = []
    original_init = PreTrainedModel.__init__
    monkeypatch.setattr(PreTrainedModel, "__init__",
                        lambda self, *a, **k: created.append(type(self).__name__) or original_init(self, *a, **k))
    watched.train()
    monkeypatch.undo()

    assert not created  # no second model object
    assert callback._scorer.model is watched.model  # the scorer wraps the trained object itself
    logged = [e for e in watched.state.log_history if any(k.startswith("mbias/") for k in e)]
    assert [e["step"] for e in logged] == [0, 2, 4]
    assert all({"mbias/accuracy", "mbias/language_share"} <= set(e) for e in logged)
    assert any("mbias/follows_text" in e for e in logged)
    assert _losses(watched) == _losses(plain) and len(_losses(plain)) == 4
    for (name, a), (_, b) in zip(plain.model.named_parameters(), watched.model.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert [m.training for m in watched.model.modules()] == [m.training for m in plain.model.modules()]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in callback.history] == \
        [{"step": e["step"], **{k: v for k, v in e.items() if k.startswith("mbias/")}} for e in logged]


def test_a_measurement_is_the_audits_numbers_and_restores_random_state(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir("llava"), tmp_path / "t")
    callback = mbias.BiasMonitorCallback(trainer, HELD_OUT, every=10, max_samples=6)
    trainer.model.train()
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    numbers = callback.measure()
    assert torch.equal(torch.random.get_rng_state(), state) and trainer.model.training
    audited = mbias.audit(trainer.model, trainer.processing_class, HELD_OUT, probes=["conflict", "modality_shapley"],
                          config={"max_samples": 6}, progress=False)
    probes = audited.summary["probes"]
    assert numbers["mbias/accuracy"] == pytest.approx(audited.summary["accuracy"])
    assert numbers["mbias/language_share"] == pytest.approx(probes["modality_shapley"]["language_share"]["mean"])
    follows = probes["conflict"]["follows_text"]["mean"]
    assert numbers.get("mbias/follows_text") == (None if follows is None else pytest.approx(follows))


def test_bad_settings_are_refused(tiny_model_dir, tmp_path):
    from mbias.errors import ConfigError

    trainer = _trainer(tiny_model_dir("llava"), tmp_path / "t")
    with pytest.raises(ConfigError, match="every"):
        mbias.BiasMonitorCallback(trainer, HELD_OUT, every=0)
    with pytest.raises(ConfigError, match="did you mean"):
        mbias.BiasMonitorCallback(trainer, HELD_OUT, probes=["conflikt"])


def test_finetune_cli_monitor_writes_the_curve(tiny_model_dir, tmp_path, capsys):
    import json

    from mbias.cli import main

    out = tmp_path / "ft"
    assert main(["finetune", "--model", tiny_model_dir("llava"), "--data", "synth:shapes-p90/train", "--recipe",
                 "lora", "--out", str(out), "--max-steps", "2", "--per-device-train-batch-size", "4",
                 "--max-train-samples", "16", "--eval-samples", "8", "--monitor-data", HELD_OUT,
                 "--monitor-every", "1", "--monitor-samples", "4", "--no-progress"]) == 0
    history = [json.loads(line) for line in (out / "monitor.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 1, 2] and all("mbias/language_share" in h for h in history)
    readme = (out / "README.md").read_text()
    assert "## Reliance during training (mbias)" in readme and "| 2 |" in readme
