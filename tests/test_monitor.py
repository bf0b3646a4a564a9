"""BiasMonitorCallback on a plain transformers.Trainer: mbias/ keys in log_history at the expected steps, the same
loss curve, weights and modes as the run without it, no second model object, and the audit's own numbers (its
batched records equal the audit's per-sample ones); on TRL's SFTTrainer; under DDP (two gloo processes: each
audits its shard, the merged numbers are logged); and the reliance curve `mbias finetune --monitor-data` draws."""

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
    assert [{k: v for k, v in h.items() if k not in ("seconds", "audited_here", "processes")}
            for h in callback.history] == \
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
    assert numbers["mbias/n_samples"] == 6 == audited.summary["n_samples"]
    assert numbers["mbias/accuracy"] == pytest.approx(audited.summary["accuracy"])
    # the share to 1e-3: the batched path rounds float32 logits differently, and on this tiny random model a share's
    # denominator is small enough to magnify that (_assert_same_records has the per-sample check)
    share = probes["modality_shapley"]["language_share"]
    assert numbers["mbias/language_share"] == pytest.approx(share["mean"], abs=1e-3)
    assert numbers["mbias/language_share_ci95"] == pytest.approx((share["ci95"][1] - share["ci95"][0]) / 2, abs=1e-3)
    follows = probes["conflict"]["follows_text"]["mean"]
    assert numbers.get("mbias/follows_text") == (None if follows is None else pytest.approx(follows))


def _assert_same_records(got, expected, path="records", tolerance=1e-5):
    """Equal records, log-probabilities and Shapley values to 1e-5: batches of another shape (padded, several
    samples) round the last bit of a float32 logit differently. A share is |phi_image| / (|phi_image| +
    |phi_text|), so its rounding is that 1e-5 over the denominator, which on a tiny random model can be ~2e-4."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), (path, set(got) ^ set(expected))
        for key in expected:
            tolerance = 1e-5
            if "share" in key and isinstance(expected[key], float):
                suffix = key.split("share", 1)[1]
                tolerance /= abs(expected["phi_image" + suffix]) + abs(expected["phi_text" + suffix])
            _assert_same_records(got[key], expected[key], f"{path}.{key}", tolerance)
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), path
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            _assert_same_records(g, e, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, abs=tolerance), path
    else:
        assert got == expected, path


def test_the_batched_records_are_the_audits_records_in_fewer_passes(tiny_model_dir, shapes_image):
    """Single-token choices (synth), multi-token choices and an open question (generation: the audit's own path),
    through the monitor's batched path and the audit's per-sample one."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mbias.data import load_rows
    from mbias.diagnose.batched import BatchedAudit
    from mbias.diagnose.config import AuditConfig, build_probes
    from mbias.diagnose.runner import audit_records, eval_mode
    from mbias.finetune.monitor import CHEAP_PROBES

    model_dir = tiny_model_dir("llava")
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    scorer = wrap_model(model, AutoProcessor.from_pretrained(model_dir))
    config = AuditConfig(probes=list(CHEAP_PROBES))
    probes = build_probes(config)
    synth = list(load_data(HELD_OUT, max_samples=6).examples)
    own = load_rows([{"id": "long", "image": shapes_image, "question": "Which shape is on the left side?",
                      "answer": "a red circle", "choices": ["a red circle", "a blue square"]},
                     {"id": "open", "image": shapes_image, "question": "What colour is the circle?",
                      "answer": "red"}]).examples
    assert any(scorer.encode(own[0]).choice_ids[c].numel() > 1 for c in range(2))  # the multi-token path
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    with eval_mode(model), torch.no_grad():
        for examples in (synth, synth + own):
            todo = list(range(len(examples)))
            batched = BatchedAudit(scorer, examples, probes, config)
            batched.records(todo)  # the first measurement makes the encodings
            calls.clear()
            got = batched.records(todo)
            n_batched = len(calls)
            calls.clear()
            expected = list(audit_records(scorer, examples, todo, probes, config))
            _assert_same_records(got, expected)
            if examples is synth:  # 6 samples x 5 variants: two padded batches (with image, without)
                assert n_batched == 2 and len(calls) == 6 * 4, (n_batched, len(calls))


def test_bad_settings_are_refused(tiny_model_dir, tmp_path):
    from mbias.errors import ConfigError

    trainer = _trainer(tiny_model_dir("llava"), tmp_path / "t")
    with pytest.raises(ConfigError, match="every"):
        mbias.BiasMonitorCallback(trainer, HELD_OUT, every=0)
    with pytest.raises(ConfigError, match="did you mean"):
        mbias.BiasMonitorCallback(trainer, HELD_OUT, probes=["conflikt"])


def test_finetune_cli_monitor_draws_the_curve_into_the_adapter_folder(tiny_model_dir, tmp_path, capsys):
    import json

    from PIL import Image

    from mbias.cli import main

    out = tmp_path / "ft"
    assert main(["finetune", "--model", tiny_model_dir("llava"), "--data", "synth:shapes-p90/train", "--recipe",
                 "plain", "--out", str(out), "--max-steps", "2", "--per-device-train-batch-size", "4",
                 "--max-train-samples", "16", "--eval-samples", "8", "--monitor-data", HELD_OUT,
                 "--monitor-every", "1", "--monitor-samples", "4", "--no-progress"]) == 0
    history = [json.loads(line) for line in (out / "monitor.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 1, 2] and all("mbias/language_share" in h for h in history)
    assert all(h["mbias/n_samples"] == 4 and h["audited_here"] == 4 for h in history)
    readme = (out / "README.md").read_text()
    assert readme.count("## Reliance during training (mbias)") == 1 and "![reliance during training](reliance.png)" in readme
    last = history[-1]
    assert f"| 2 | {last['mbias/follows_text']:.3f} ± {last['mbias/follows_text_ci95']:.3f} |" in readme or \
        "follows_text" not in last
    with Image.open(out / "reliance.png") as picture:
        assert picture.format == "PNG" and picture.width > 300
        pixels = picture.convert("RGB")
        colours = {pixels.getpixel((x, y)) for x in range(pixels.width) for y in range(pixels.height)}
    from mbias.finetune.monitor import CURVES

    drawn = {tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for _, _, c in CURVES}  # each curve's own colour
    assert drawn <= colours, drawn - colours


def test_the_curve_needs_numbers(tmp_path):
    from mbias.finetune.monitor import plot_reliance

    assert plot_reliance([{"step": 0, "mbias/n_samples": 0.0}], tmp_path / "r.png") is None
    assert not (tmp_path / "r.png").exists()
    path = plot_reliance([{"step": s, "mbias/accuracy": a} for s, a in ((0, 0.4), (5, 0.6))], tmp_path / "r.png")
    assert path == tmp_path / "r.png" and path.stat().st_size > 1000


def test_trl_sft_trainer_logs_the_numbers_and_keeps_its_own_metrics(tiny_model_dir, tmp_path):
    trl = pytest.importorskip("trl", reason="trl is a test extra: pip install -e '.[dev]'")
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = tiny_model_dir("llava")
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    scorer = wrap_model(model, processor)
    encoded = EncodedDataset(scorer, load_data("synth:shapes-p90/train", max_samples=16).examples)
    rows = Dataset.from_dict({"row": list(range(len(encoded)))})  # SFTTrainer takes a datasets.Dataset
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, logging_steps=1,
                         learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no", seed=0,
                         remove_unused_columns=False, disable_tqdm=True, dataset_kwargs={"skip_prepare_dataset": True})
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=processor,
                             data_collator=lambda batch: dict(collate(scorer, [encoded[r["row"]] for r in batch])
                                                              .model_inputs))
    assert isinstance(trainer, trl.SFTTrainer)
    trainer.add_callback(mbias.BiasMonitorCallback(trainer, HELD_OUT, every=1, max_samples=4))
    trainer.train()
    logged = [e for e in trainer.state.log_history if "mbias/accuracy" in e]
    assert [e["step"] for e in logged] == [0, 1, 2] and all("mbias/language_share" in e for e in logged)
    # SFTTrainer's own training metrics stay on its loss log (its log override would hand them to the monitor's)
    losses = [e for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all("entropy" in e and "mean_token_accuracy" in e for e in losses)
    assert not any("entropy" in e for e in logged)


def test_ddp_two_processes_audit_their_shards_and_log_the_merged_numbers(tiny_model_dir, tmp_path, accelerate_launch):
    """Two gloo CPU processes: the main one logs the numbers of all 6 samples (it audited 3 itself), equal to
    one process's audit of the same model before training."""
    import json
    import subprocess

    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mbias.diagnose.batched import BatchedAudit
    from mbias.diagnose.config import AuditConfig, build_probes
    from mbias.diagnose.runner import eval_mode
    from mbias.finetune.monitor import CHEAP_PROBES

    model_dir = tiny_model_dir("llava")
    out = tmp_path / "two"
    proc = subprocess.run([*accelerate_launch(), "-m", "mbias", "finetune", "--model", model_dir, "--data",
                           "synth:shapes-p90/train", "--recipe", "plain", "--out", str(out), "--max-steps", "1",
                           "--per-device-train-batch-size", "2", "--max-train-samples", "8", "--eval-samples", "4",
                           "--monitor-data", HELD_OUT, "--monitor-every", "1", "--monitor-samples", "6",
                           "--no-progress"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = [json.loads(line) for line in (out / "monitor.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 1]
    assert all(h["processes"] == 2 and h["audited_here"] == 3 and h["mbias/n_samples"] == 6 for h in history)

    # one process, the same model before training (LoRA starts as the identity): the numbers of step 0
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    scorer = wrap_model(model, AutoProcessor.from_pretrained(model_dir))
    config = AuditConfig(probes=list(CHEAP_PROBES), max_samples=6)
    examples = load_data(HELD_OUT, max_samples=6).examples
    with eval_mode(model), torch.no_grad():
        records = BatchedAudit(scorer, examples, build_probes(config), config).records(list(range(6)))
    trainer = _trainer(model_dir, tmp_path / "one", steps=1)
    alone = mbias.BiasMonitorCallback(trainer, HELD_OUT, every=1, max_samples=6).metrics(records)
    merged = {k: v for k, v in history[0].items() if k.startswith("mbias/")}
    assert merged.keys() == alone.keys() and merged == pytest.approx(alone, abs=1e-5)
