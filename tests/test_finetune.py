"""Fine-tuning: recipes change only what they should, M-SAM undoes its perturbation, MILES moves the right
learning rate, resuming continues the same trajectory, and the recipes' losses on hand-computed cases."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import assert_checkpointing_trains_the_same

from mbias.errors import ConfigError
from mbias.finetune.config import FinetuneConfig
from mbias.finetune.recipes import RECIPES
from mbias.finetune.run import build_trainer, run_finetune

DATA = "synth:shapes-p90/train"
# every registered recipe at its defaults, plus the settings that take another code path
RECIPE_RUNS = [(name, {}) for name in RECIPES.names()] + [
    ("poe", {"mode": "lpf"}), ("poe", {"bias_expert": "prior_table"}), ("poe", {"bias_expert": "masked_image"}),
    ("poe", {"answer_space": "tokens"}), ("lmh", {"bias_expert": "prior_table"}),
    ("mdpo", {"rejected_answer": "no_image", "corruption": "crop", "sft_weight": 0.5})]


def _config(recipe, **kw):
    base = dict(recipe=recipe, max_steps=2, per_device_train_batch_size=4, max_train_samples=16, eval_samples=8,
                learning_rate=1e-2, logging_steps=1, warmup_steps=0.0)
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.mark.parametrize("recipe, settings", RECIPE_RUNS)
def test_recipe_changes_only_trainable_parameters(recipe, settings, tiny_model_dir, tmp_path):
    trainer, _ = build_trainer(tiny_model_dir("llava"), DATA, tmp_path / recipe,
                               config=_config(recipe, recipe_config=settings), progress=False)
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    vision_tower = [n for n in before if ".vision_tower." in n]
    assert vision_tower and not set(vision_tower) & trainable  # the vision tower stays frozen by default
    trainer.train()
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    assert changed and changed <= trainable, sorted(changed - trainable)[:3]
    assert any("multi_modal_projector" in n for n in changed)  # the vision side is trained too
    log = [json.loads(line) for line in (tmp_path / recipe / "training_log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for e in log for v in e.values() if isinstance(v, float))
    assert [e["step"] for e in log] == [1, 2] and all(math.isfinite(e["loss"]) for e in log)
    assert {"vision", "language"} <= {k.split("/")[0] for k in log[0]["lr"]}


def test_saved_adapter_loads_with_peft_and_holds_only_lora(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    out = run_finetune(tiny_model_dir("llava"), DATA, tmp_path / "ft", config=_config("plain"), progress=False)
    keys = load_file(out / "adapter_model.safetensors").keys()
    assert keys and all("lora_" in k for k in keys) and not any("vision_tower" in k for k in keys)
    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("llava"))
    PeftModel.from_pretrained(base, str(out))
    record = json.loads((out / "recipe.json").read_text())
    assert record["recipe"] == "plain" and record["steps"] == 2


def test_vision_tower_lora_only_when_asked(tiny_model_dir, tmp_path):
    trainer, _ = build_trainer(tiny_model_dir("llava"), DATA, tmp_path / "v",
                               config=_config("plain", lora_targets=["language", "vision"]), progress=False)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert any(".vision_tower." in n for n in trainable)
    assert not any("multi_modal_projector" in n for n in trainable)


@pytest.mark.parametrize("recipe", ["msam", "sam"])
@pytest.mark.parametrize("direction", ["fresh", "previous"])
def test_msam_undoes_its_perturbation(tiny_model_dir, tmp_path, direction, recipe):
    trainer, _ = build_trainer(tiny_model_dir("llava"), DATA, tmp_path / "m",
                               config=_config(recipe, recipe_config={"direction": direction}), progress=False)
    trainer.create_optimizer_and_scheduler(num_training_steps=2)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model = trainer.model
    for _step in range(2):  # with direction="previous" the second step perturbs along the first step's gradient
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.zero_grad()
        loss, signals = trainer.recipe.training_step(model, batch)
        assert all(torch.equal(before[n], p.detach()) for n, p in model.named_parameters())
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
        assert signals["loss/dominant_perturbed"] != signals["loss/dominant"]
    assert (trainer.recipe.last_direction is not None) == (direction == "previous")


def test_sam_steps_with_the_gradient_at_the_perturbed_point(tiny_model_dir, tmp_path):
    """Vanilla SAM by hand: g = grad L(theta), eps = rho g / ||g||, the step's gradient is grad L(theta + eps)."""
    from mbias.finetune.data import answer_forward

    trainer, _ = build_trainer(tiny_model_dir("llava"), DATA, tmp_path / "s",
                               config=_config("sam", recipe_config={"rho": 0.5}, lora_dropout=0.0), progress=False)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model = trainer.model
    params = [p for p in model.parameters() if p.requires_grad]

    def mean_loss():
        sums, counts, _ = answer_forward(model, batch)
        return (-sums / counts.clamp(min=1)).mean()

    g = torch.autograd.grad(mean_loss(), params)
    norm = torch.sqrt(sum((x ** 2).sum() for x in g))
    with torch.no_grad():
        for p, x in zip(params, g, strict=True):
            p.add_(0.5 * x / norm)
    expected = torch.autograd.grad(mean_loss(), params)
    with torch.no_grad():
        for p, x in zip(params, g, strict=True):
            p.sub_(0.5 * x / norm)
    unperturbed = [x.clone() for x in g]
    model.zero_grad()
    trainer.recipe.training_step(model, batch)
    got = [p.grad for p in params]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, expected, strict=True))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, unperturbed, strict=True))


def test_encoder_groups_leave_the_llm_to_a_shared_fusion_group(tiny_model_dir, tmp_path):
    trainer, _ = build_trainer(tiny_model_dir("llava"), DATA, tmp_path / "e",
                               config=_config("ogm_ge", tune="full", modality_groups="encoders"), progress=False)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    embeddings = trainer.model.get_input_embeddings().weight
    assert [p is embeddings for p in trainer.recipe.ctx.params_of("language")] == [True]
    shared = {id(p) for p in trainer.recipe.ctx.params_of("shared")}
    assert all(id(p) in shared for p in trainer.model.get_decoder().layers.parameters())
    assert trainer.model.lm_head.weight is embeddings or id(trainer.model.lm_head.weight) in shared
    vision = {id(p) for p in trainer.recipe.ctx.params_of("vision")}
    assert all(id(p) in vision for p in trainer.model.model.vision_tower.parameters())
    with pytest.raises(ConfigError, match="tune: full"):
        _config("ogm_ge", modality_groups="encoders")


def test_miles_moves_the_dominant_sides_learning_rate(tiny_model_dir, tmp_path):
    from mbias.finetune.recipes.miles import lr_factors, utilisation

    assert utilisation(0.8, 0.4, 0.7) == pytest.approx((0.5, 0.125))
    assert lr_factors(0.5, 0.125, tau=0.2, mu=0.5) == {"vision": 0.5, "language": 1.0}
    assert lr_factors(0.1, 0.6, tau=0.2, mu=0.5) == {"vision": 1.0, "language": 0.5}
    assert lr_factors(0.3, 0.2, tau=0.2, mu=0.5) == {"vision": 1.0, "language": 1.0}  # gap within tau
    assert lr_factors(-0.1, -0.3, tau=0.2, mu=0.5) == {"vision": 1.0, "language": 1.0}  # both negative
    trainer, _ = build_trainer(tiny_model_dir("llava"), DATA, tmp_path / "mi", config=_config("miles", learning_rate=1e-3),
                               progress=False)
    trainer.create_optimizer_and_scheduler(num_training_steps=2)
    recipe = trainer.recipe
    recipe.factors = {"vision": 1.0, "language": 0.5}
    recipe.apply()
    sched = trainer.lr_scheduler
    for i, group in enumerate(trainer.optimizer.param_groups):
        want = 0.5 if group["modality"] == "language" else 1.0
        assert sched.base_lrs[i] == pytest.approx(1e-3 * want)
    recipe.factors = {"vision": 1.0, "language": 1.0}
    recipe.apply()
    assert all(b == pytest.approx(1e-3) for b in sched.base_lrs)
    signals = recipe.measure()  # a real measurement on held-out data
    assert 0 <= signals["miles/acc_full"] <= 1 and "miles/u_text" in signals


def test_resume_continues_the_same_trajectory(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    cfg = _config("cggm", max_steps=4, save_strategy="steps", save_steps=2)
    straight = run_finetune(tiny_model_dir("llava"), DATA, tmp_path / "straight", config=cfg, progress=False)
    from transformers import TrainerCallback

    class StopAfterTwo(TrainerCallback):  # an interruption right after the first checkpoint
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 2

    trainer, _ = build_trainer(tiny_model_dir("llava"), DATA, tmp_path / "resumed", config=cfg, progress=False)
    trainer.add_callback(StopAfterTwo())
    trainer.train()
    resumed = run_finetune(tiny_model_dir("llava"), DATA, tmp_path / "resumed", config=cfg, progress=False,
                           resume=True)
    a, b = load_file(straight / "adapter_model.safetensors"), load_file(resumed / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    steps = [json.loads(line)["step"] for line in (resumed / "training_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_label_space_recipes_refuse_open_ended_data(tiny_model_dir, tmp_path):
    from PIL import Image

    from mbias.errors import DataError

    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    data = tmp_path / "open.jsonl"
    data.write_text(json.dumps({"id": "a", "image": "x.png", "question": "Describe it.", "answer": "dark"}) + "\n")
    for recipe in ("mnl", "cggm", "miles"):
        with pytest.raises(DataError, match="multiple-choice"):
            build_trainer(tiny_model_dir("llava"), str(data), tmp_path / recipe, config=_config(recipe),
                          progress=False)


# ---- the recipes' arithmetic on hand-computed cases


def test_mnl_margins_guidance_and_negative_term():
    from mbias.finetune.recipes.mnl import negative_learning, robust_dominant

    gold = torch.tensor([0, 0, 1])
    z_full = torch.tensor([[2.0, 1.0, 0.0], [2.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
    z_txt = torch.tensor([[3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    z_img = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    text_dom, image_dom, m = robust_dominant(z_full, z_txt, z_img, gold)
    # j = strongest non-target of the full prediction: class 1, class 2, class 2
    assert m["xi_text"].tolist() == [3.0, 0.0, 1.0] and m["xi_image"].tolist() == [1.0, 1.0, -1.0]
    assert text_dom.tolist() == [True, False, True]  # larger margin and larger gold probability
    assert image_dom.tolist() == [False, True, False]
    z_dom, z_weak = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    mask = torch.tensor([True])
    got = negative_learning(z_dom, z_weak, torch.tensor([0]), mask, weight=0.7, reduction="batch")
    # -log q_y - 0.7 * p_1 log q_1 with p = q = (0.5, 0.5)
    assert float(got) == pytest.approx(math.log(2) + 0.7 * 0.5 * math.log(2))
    assert float(negative_learning(z_dom, z_weak, torch.tensor([0]), mask, 0.7, "batch_classes")) == \
        pytest.approx(float(got) / 2)
    assert float(negative_learning(z_dom, z_weak, torch.tensor([0]), ~mask, 0.7, "batch")) == 0.0


def test_cggm_coefficients_and_guards():
    from mbias.finetune.recipes.cggm import modulation_coefficients

    b = modulation_coefficients({"vision": 0.1, "language": 0.3}, s_min=1e-3, b_max=3.0)
    assert b == pytest.approx({"vision": 0.75, "language": 0.25})  # the slower learner gets the larger B
    assert modulation_coefficients({"vision": 0.2, "language": -0.2}, 1e-3, 3.0) == {"vision": 1.0, "language": 1.0}
    wild = modulation_coefficients({"vision": 0.5, "language": -0.49}, 1e-3, 3.0)
    assert wild == {"vision": 0.0, "language": 3.0}  # no negative B, no explosion


def test_ogm_coefficient():
    from mbias.finetune.recipes.ogm_ge import ogm_coefficient

    assert ogm_coefficient(3.0, 1.0, alpha=0.5) == pytest.approx(1 - math.tanh(1.5))
    assert ogm_coefficient(3.0, 1.0, alpha=0.5, offset=1.0) == pytest.approx(1 - math.tanh(1.0))
    assert ogm_coefficient(1.0, 2.0, alpha=0.5, offset=1.0) == 1.0


def test_cggm_improvement_over_windows():
    from mbias.finetune.recipes.cggm import improvement

    assert improvement([0.25], 1) == 0.25  # the first step: against 0, as the released code
    assert improvement([0.25, 0.75], 1) == 0.5  # batch to batch
    assert improvement([0.0, 0.5, 0.5, 1.0], 2) == pytest.approx(0.5)  # mean(0.5, 1) - mean(0, 0.5)
    assert improvement([0.5, 1.0], 2) == pytest.approx(0.75)  # nothing before the window yet


def test_msam_weights():
    from mbias.finetune.signals import batch_shapley, modality_weights
    from mbias.variants import BOTH_MASKED, FULL, IMAGE_MASKED, QUESTION_MASKED

    vals = {FULL: torch.tensor([1.0, 1.0]), QUESTION_MASKED: torch.tensor([1.0, 0.0]),
            IMAGE_MASKED: torch.tensor([0.0, 0.0]), BOTH_MASKED: torch.tensor([0.0, 0.0])}
    phi_img, phi_txt = batch_shapley(vals)
    assert phi_img.tolist() == [1.0, 0.5] and phi_txt.tolist() == [0.0, 0.5]
    w = modality_weights(phi_img, phi_txt)
    assert w.tolist() == [[1.0, 0.0], [0.5, 0.5]]


@pytest.mark.parametrize("recipe", ["cggm", "ogm_ge"])
def test_a_misspelt_modulation_mode_is_refused(recipe):
    from mbias.errors import ConfigError
    from mbias.finetune.recipes import RECIPES

    config_class = RECIPES.get(recipe).config_class
    assert config_class(mode="gradient").mode == "gradient"
    with pytest.raises(ConfigError, match="mode must be update or gradient"):
        config_class(mode="gradent")


# ---- the debiasing recipes: a detached bias expert, and conditional preference


def test_poe_loss_is_the_product_of_experts():
    from mbias.finetune.recipes.poe import lpf_weights, poe_loss

    bias = torch.log(torch.tensor([[0.9, 0.1], [0.9, 0.1]]))
    z = torch.zeros(2, 2, requires_grad=True)  # the model alone: 50/50
    loss = poe_loss(z, bias, torch.tensor([0, 1]))
    assert loss.tolist() == pytest.approx([-math.log(0.9), -math.log(0.1)])
    loss.sum().backward()
    # d/dz = p_ens - onehot: the example the bias already explains pushes the model 10x less than the other
    assert z.grad.flatten().tolist() == pytest.approx([-0.1, 0.1, 0.9, -0.9])
    padded = torch.tensor([[0.0, 0.0, float("-inf")]])  # a padding slot stays out of the product
    assert float(poe_loss(padded, torch.log(torch.tensor([[0.5, 0.5, 0.0]])), torch.tensor([1]))) == \
        pytest.approx(math.log(2))
    # LPF: (1 - p_bias(answer))^gamma; over answer tokens p_bias(answer) is the product of its tokens'
    assert lpf_weights(bias, torch.tensor([0, 1]), torch.arange(2), 2, 2.0).tolist() == pytest.approx([0.01, 0.81])
    tokens = torch.log(torch.tensor([[0.5, 0.5], [0.2, 0.8], [0.9, 0.1]]))
    w = lpf_weights(tokens, torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]), 2, 1.0)
    assert w.tolist() == pytest.approx([1 - 0.5 * 0.8, 1 - 0.9])


def test_learned_mixin_gate_and_entropy():
    from mbias.finetune.recipes.lmh import mixin_loss

    bias = torch.log(torch.tensor([[0.9, 0.1, 0.0]]))  # a -inf slot: not an answer
    z = torch.zeros(1, 3)
    z[0, 2] = float("-inf")
    gate = torch.tensor([0.0], requires_grad=True)
    nll, entropy = mixin_loss(z, bias, gate, torch.tensor([1]), 0.36)
    assert float(nll) == pytest.approx(math.log(2))  # gate 0: the model alone
    assert float(entropy) == pytest.approx(math.log(2))  # gate 0 flattens the bias: maximal entropy
    (nll + 0.36 * entropy).backward()
    assert torch.isfinite(gate.grad).all()  # the -inf slot sends no NaN into the gate
    nll1, _ = mixin_loss(z, bias, torch.tensor([1.0]), torch.tensor([1]), 0.36)
    assert float(nll1) == pytest.approx(-math.log(0.1))  # gate 1: the plain product


def test_mdpo_losses():
    from mbias.finetune.recipes.mdpo import dpo_loss, mdpo_losses

    same = torch.tensor([-1.0])
    cond, anchor = mdpo_losses(same, same, same, same, beta=0.1, delta=0.0)
    assert float(cond) == pytest.approx(math.log(2)) and float(anchor) == pytest.approx(math.log(2))
    # the real image raised log p(y) by 2 over the reference, the corrupted one lowered it by 3
    cond, anchor = mdpo_losses(torch.tensor([1.0]), torch.tensor([-4.0]), torch.tensor([-1.0]), torch.tensor([-1.0]),
                               beta=0.1, delta=0.0)
    assert float(cond) == pytest.approx(-math.log(1 / (1 + math.exp(-0.5))))
    assert float(anchor) == pytest.approx(-math.log(1 / (1 + math.exp(-0.2))))
    got = dpo_loss(torch.tensor([0.0]), torch.tensor([-2.0]), torch.tensor([-1.0]), torch.tensor([-1.0]), beta=0.5)
    assert float(got) == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))


def test_prior_table_counts_answers_per_wording():
    from mbias.example import Example
    from mbias.finetune.bias_expert import PriorTable

    exs = [Example(str(i), None, q, a) for i, (q, a) in enumerate(
        [("What colour is it?", "red")] * 3 + [("What colour is it?", "blue"), ("Which colour now?", "blue")])]
    table = PriorTable(exs, words=0)
    assert table.log_probs("what colour is it", ["red", "blue", "green"]) == pytest.approx(
        [math.log(4 / 7), math.log(2 / 7), math.log(1 / 7)])  # add-one smoothing
    by_type = PriorTable(exs, words=1)  # key: the first word ("what" / "which")
    assert by_type.log_probs("Which one?", ["red", "blue"]) == pytest.approx([math.log(1 / 3), math.log(2 / 3)])


@pytest.mark.parametrize("recipe, settings", [("poe", {}), ("lmh", {}), ("mdpo", {"rejected_answer": "no_image"})])
def test_the_bias_expert_and_the_reference_are_the_model_before_fine_tuning(recipe, settings, tiny_model_dir,
                                                                            tmp_path):
    trainer, _ = build_trainer(tiny_model_dir("llava"), DATA, tmp_path / recipe,
                               config=_config(recipe, recipe_config=settings, max_steps=3), progress=False)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    recipe_obj, model = trainer.recipe, trainer.model

    def frozen_view():
        from mbias.finetune.data import answer_forward
        from mbias.variants import IMAGE_MASKED, IMAGE_REMOVED

        with recipe_obj.frozen_base(model) as base:
            return answer_forward(base, batch, IMAGE_REMOVED if "mb_noimage__input_ids" in batch else IMAGE_MASKED)[0]

    before = frozen_view()
    trainer.train()
    assert torch.allclose(before, frozen_view(), atol=1e-6)  # the LoRA weights moved; the expert did not


def test_open_ended_answers_train_in_token_space_and_tables_refuse(tiny_model_dir, tmp_path):
    from PIL import Image

    from mbias.errors import ConfigError, DataError

    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "x.png")
    data = tmp_path / "open.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "image": "x.png", "question": "Describe it.",
                                        "answer": "a red square"}) + "\n" for i in range(8)))
    trainer, _ = build_trainer(tiny_model_dir("llava"), str(data), tmp_path / "poe", config=_config("poe"),
                               progress=False)
    assert trainer.recipe.expert.space == "tokens" and not trainer.recipe.batch_spec().choices
    trainer.train()
    with pytest.raises(ConfigError, match="prior_table needs multiple-choice"):
        build_trainer(tiny_model_dir("llava"), str(data), tmp_path / "t",
                      config=_config("poe", recipe_config={"bias_expert": "prior_table"}), progress=False)
    with pytest.raises(DataError, match="choices"):
        build_trainer(tiny_model_dir("llava"), str(data), tmp_path / "c",
                      config=_config("lmh", recipe_config={"answer_space": "choices"}), progress=False)
    with pytest.raises(DataError, match="multiple-choice"):
        build_trainer(tiny_model_dir("llava"), str(data), tmp_path / "m",
                      config=_config("mdpo", recipe_config={"rejected_answer": "no_image"}), progress=False)


# ---- the settings are transformers' TrainingArguments


def test_finetune_help_lists_transformers_training_arguments(capsys):
    from mbias.cli import main

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--gradient_checkpointing", "--lr_scheduler_type", "--report_to", "--bf16",
                                         "--recipe", "--lora_targets", "--tune"))


def test_gradient_checkpointing_and_report_to_none_on_cpu(tiny_model_dir, tmp_path):
    from mbias.cli import main

    out = tmp_path / "ft"
    assert main(["finetune", "--model", tiny_model_dir("llava"), "--data", DATA, "--out", str(out), "--recipe", "poe",
                 "--max-steps", "2", "--per-device-train-batch-size", "4", "--max-train-samples", "8",
                 "--gradient-checkpointing", "--report-to", "none", "--no-progress"]) == 0
    record = json.loads((out / "recipe.json").read_text())
    assert record["finetune"]["gradient_checkpointing"] is True and record["steps"] == 2


@pytest.mark.parametrize("recipe", ["msam", "poe", "mdpo", "mnl"])
def test_gradient_checkpointing_trains_the_same_weights_for_recipes_with_extra_passes(recipe, tiny_model_dir,
                                                                                      tmp_path):
    """Frozen-base passes, ablated variants, SAM's second forward: recomputed layers give the same gradients."""
    assert_checkpointing_trains_the_same(tiny_model_dir("llava"),
                                         lambda on: _config(recipe, gradient_checkpointing=on), tmp_path)


def test_one_config_file_reproduces_a_run_and_old_keys_name_their_new_ones(tiny_model_dir, tmp_path, capsys):
    import yaml

    from mbias.cli import main

    cfg = tmp_path / "run.yaml"
    run = {"model": tiny_model_dir("llava"), "data": DATA, "recipe": "plain", "max_steps": 2,
           "per_device_train_batch_size": 4, "learning_rate": 1e-3, "max_train_samples": 8}
    cfg.write_text(yaml.safe_dump(run))
    assert main(["finetune", "--config", str(cfg), "--out", str(tmp_path / "ft"), "--no-progress"]) == 0
    record = json.loads((tmp_path / "ft" / "recipe.json").read_text())
    assert record["finetune"]["per_device_train_batch_size"] == 4 and record["finetune"]["learning_rate"] == 1e-3
    cfg.write_text(yaml.safe_dump({**run, "lr": 1e-3}))
    assert main(["finetune", "--config", str(cfg), "--out", str(tmp_path / "old"), "--no-progress"]) == 2
    assert "'lr' is now 'learning_rate'" in capsys.readouterr().err and not (tmp_path / "old").exists()


def test_full_tuning_trains_every_parameter_and_writes_a_model_folder(tiny_model_dir, tmp_path):
    from transformers import AutoModelForImageTextToText

    trainer, _ = build_trainer(tiny_model_dir("llava"), DATA, tmp_path / "full", progress=False,
                               config=_config("ogm_ge", tune="full"))
    model = trainer.model
    assert all(p.requires_grad for p in model.parameters())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert any(".vision_tower." in n for n in changed) and any("language_model" in n for n in changed)
    out = run_finetune(tiny_model_dir("llava"), DATA, tmp_path / "full2", config=_config("plain", tune="full"),
                       progress=False)
    AutoModelForImageTextToText.from_pretrained(out)  # a model folder, with its processor beside it
    assert (out / "preprocessor_config.json").exists() or (out / "processor_config.json").exists()
    with pytest.raises(ConfigError, match="needs tune: lora"):
        build_trainer(tiny_model_dir("llava"), DATA, tmp_path / "x", config=_config("mdpo", tune="full"),
                      progress=False)


def test_the_plain_recipes_old_name_says_its_new_one():
    from mbias.errors import ConfigError
    from mbias.finetune.config import FinetuneConfig

    with pytest.raises(ConfigError, match="recipe 'lora' is now 'plain'"):
        FinetuneConfig(output_dir="unused", recipe="lora")
