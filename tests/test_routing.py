"""Modality-routed LoRA: each routed part acts only at its own tokens, the recipes steer the routed groups, and a
routed adapter saves, resumes and loads back for audits with the same scores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_checkpointing_trains_the_same

from mbias.data import load_data
from mbias.errors import ConfigError
from mbias.finetune.config import FinetuneConfig
from mbias.finetune.recipes import RECIPES
from mbias.finetune.run import build_trainer, run_finetune
from mbias.models import FAMILIES, LoadOptions, load_model
from mbias.models.routing import ROUTES, ROUTING_FILE
from mbias.tiny import BUILDERS

DATA = "synth:shapes-p90/train"
MODEL_TYPES = [t for family in FAMILIES for t in family.model_types if t in BUILDERS]


def _config(recipe="plain", **kw):
    base = dict(recipe=recipe, max_steps=2, per_device_train_batch_size=4, max_train_samples=16, eval_samples=8,
                learning_rate=1e-2, logging_steps=1, warmup_steps=0.0, lora_routing=True)
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.mark.parametrize("family", MODEL_TYPES)
def test_each_routed_part_acts_only_at_its_tokens(family, tiny_model_dir, tmp_path):
    from peft.tuners.lora import LoraLayer

    trainer, _ = build_trainer(tiny_model_dir(family), DATA, tmp_path / "r", config=_config(), progress=False)
    model, scorer = trainer.model, trainer.mbias_scorer
    layer = next(m for m in model.modules() if isinstance(m, LoraLayer) and "vision" in m.lora_B)
    seen = {}
    for route in ROUTES:  # LoRA B starts at zero: give each routed part an output to see
        torch.nn.init.normal_(layer.lora_B[route].weight)
        layer.lora_B[route].register_forward_hook(lambda m, a, out, route=route: seen.__setitem__(route, out))
    model.get_input_embeddings().register_forward_pre_hook(lambda m, a: seen.__setitem__("ids", a[0]))
    example = load_data("synth:shapes-p90/test-cp", max_samples=1).examples[0]
    model.eval()
    with torch.no_grad():
        scorer.score(scorer.prepare(example))
    image = seen["ids"] == scorer.image_token_id
    assert image.any() and (~image).any()
    norms = {route: seen[route].norm(dim=-1) for route in ROUTES}
    assert (norms["vision"][~image] == 0).all() and (norms["vision"][image] > 0).all()
    assert (norms["language"][image] == 0).all() and (norms["language"][~image] > 0).all()


@pytest.mark.parametrize("recipe", RECIPES.names())
def test_every_recipe_trains_routed_groups(recipe, tiny_model_dir, tmp_path):
    trainer, _ = build_trainer(tiny_model_dir("llava"), DATA, tmp_path / recipe, config=_config(recipe),
                               progress=False)
    groups = trainer.modality_of
    llm_lora = [n for n in groups if ".language_model." in n and ".lora_" in n]
    assert {groups[n] for n in llm_lora} == {"vision", "language", "shared"}
    assert all(groups[n] == route for n in llm_lora for route in ROUTES if f".{route}." in n)
    assert all(groups[n] == "vision" for n in groups if "multi_modal_projector" in n and ".lora_" in n)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed <= trainable
    for route in ROUTES:
        assert any(f"lora_B.{route}." in n for n in changed), route
    assert {g.get("modality") for g in trainer.optimizer.param_groups} == {"vision", "language", "shared"}


def test_a_routed_adapter_resumes_and_loads_back_with_the_same_scores(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    model = tiny_model_dir("llava")
    cfg = _config("miles", max_steps=4, save_strategy="steps", save_steps=2)
    straight = run_finetune(model, DATA, tmp_path / "straight", config=cfg, progress=False)
    assert (straight / ROUTING_FILE).exists() and all((straight / r / "adapter_config.json").exists() for r in ROUTES)

    class StopAfterTwo(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 2

    trainer, _ = build_trainer(model, DATA, tmp_path / "resumed", config=cfg, progress=False)
    trainer.add_callback(StopAfterTwo())
    trainer.train()
    resumed = run_finetune(model, DATA, tmp_path / "resumed", config=cfg, progress=False, resume=True)
    for part in ("", *ROUTES):
        a = load_file(straight / part / "adapter_model.safetensors")
        b = load_file(resumed / part / "adapter_model.safetensors")
        assert a.keys() == b.keys() and a
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6), (part, k)

    # the trained model's own scores == an audit's, loaded from the folder; without the routed parts they differ
    trainer, _ = build_trainer(model, DATA, tmp_path / "again", config=cfg, progress=False)
    trainer.train()
    trainer.model.eval()
    examples = load_data("synth:shapes-p90/test-cp", max_samples=4).examples
    scorer = trainer.mbias_scorer
    trained = torch.stack([scorer.score(scorer.prepare(e)) for e in examples])
    loaded = load_model(model, LoadOptions(adapter=str(straight)))
    audited = torch.stack([loaded.score(loaded.prepare(e)) for e in examples])
    torch.testing.assert_close(audited, trained, atol=1e-5, rtol=1e-5)
    shared_only = tmp_path / "shared-only"
    shutil.copytree(straight, shared_only)
    (shared_only / ROUTING_FILE).unlink()
    plain = load_model(model, LoadOptions(adapter=str(shared_only)))
    assert not torch.allclose(torch.stack([plain.score(plain.prepare(e)) for e in examples]), audited, atol=1e-4)
    assert json.loads((straight / "recipe.json").read_text())["finetune"]["lora_routing"] is True


def test_routing_settings_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="needs tune: lora"):
        _config(tune="full")
    with pytest.raises(ConfigError, match="must include language"):
        _config(lora_targets=["projector"])


@pytest.mark.parametrize("recipe, settings", [("mnl", {"reduction": "batch"}), ("ogm_ge", {"noise": "none"})])
def test_a_routed_adapter_trains_the_same_with_gradient_checkpointing(recipe, settings, tiny_model_dir, tmp_path):
    """Checkpointed layers are recomputed during backward, after the step's other passes (the ablated variants)
    embedded other ids: each recomputation must route with its own pass's image positions."""
    assert_checkpointing_trains_the_same(
        tiny_model_dir("llava"), lambda on: _config(recipe, recipe_config=settings, gradient_checkpointing=on),
        tmp_path)


def test_mbias_audit_reads_a_routed_adapter_and_says_so(tiny_model_dir, tmp_path):
    import jsonschema

    from mbias.cli import main

    model = tiny_model_dir("llava")
    ft = run_finetune(model, DATA, tmp_path / "routed", config=_config(), progress=False)
    out = tmp_path / "audit"
    assert main(["audit", "--model", model, "--adapter", str(ft), "--data", "synth:shapes-p90/test-cp", "--out",
                 str(out), "--no-progress", "--max-samples", "2", "--probes", "modality_shapley"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    schema = json.loads((Path(__file__).parents[1] / "reports" / "summary.schema.json").read_text())
    jsonschema.validate(summary, schema)
    assert summary["adapter"]["routed"] is True
    assert f"routed LoRA adapter {ft}" in (out / "report.md").read_text()


def test_mbias_finetune_says_it_wrote_a_routed_adapter(tiny_model_dir, tmp_path, capsys):
    from mbias.cli import main

    assert main(["finetune", "--model", tiny_model_dir("llava"), "--data", DATA, "--lora-routing", "true",
                 "--max-steps", "1", "--per-device-train-batch-size", "2", "--max-train-samples", "4", "--no-progress",
                 "--out", str(tmp_path / "routed")]) == 0
    assert "wrote a plain routed LoRA adapter" in capsys.readouterr().out
