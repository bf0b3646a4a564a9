"""The benchmark suites (run with ``python benchmarks/harness.py SUITE``): what each trains, on which builds, what it
measures. The protocol they share is in harness.py's docstring; results land in results/SUITE/.

- ``recipes``: do the debiasing recipes (poe, lmh, mdpo) undo a planted wording bias better than plain LoRA? A
  biased zoo build (synth:shapes-p90: the question's wording predicts the answer 90% of the time) fine-tuned on the
  same biased data; measured on test-cp (the cue is always wrong), test-balanced, test-id, with swapped images and
  the audit's probes.
- ``learning-speed``: do the seed balancing recipes (miles, mnl) help where their premise holds? A tiny LLaVA at
  random initialisation trained with every parameter on the biased data: the wording is learned in tens of steps,
  the pictures take hundreds.
- ``routing``, ``sgd``, ``encoders``, ``overfit``, ``late-fusion``: variants of the learning-speed scenario (how the
  recipes' parameter groups are drawn, the papers' optimizer, an overfitting regime, a late-fusion model). Their
  arms run at the settings in their config files (chosen on val by the scripts they replace); their results files
  in results/ predate the harness and say so.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import evals
from harness import WORK, Arm, Served, Suite


def biased_build(seed: int) -> str:
    """The recipes suite's base of run ``seed``: the biased zoo build trained with seed ``seed`` (zoo:shapes-p90 is
    the pinned -seed5; -seed1 and -seed7 are pinned too)."""
    return f"zoo:shapes-p90-seed{seed}"


def scratch_build(seed: int) -> str:
    """The learning-speed base of run ``seed``: zoo:scratch at training seed ``seed`` (another random init)."""
    return "zoo:scratch" + (f"-seed{seed}" if seed else "")


def _recipe(name: str, **config) -> dict:
    return {"recipe_config": config}


def _gap_notes(table: dict, suite: Suite) -> list[str]:
    """How much of the test-cp gap between plain LoRA and each bound a recipe closes (mean over builds)."""
    base = table[suite.baseline]["test-cp"]["mean"]
    lines = []
    for bound in ("lora on unbiased data", "zoo:shapes-p00 (unbiased, not fine-tuned)"):
        if bound not in table:
            continue
        gap = table[bound]["test-cp"]["mean"] - base
        shares = [f"{label} {(r['test-cp']['mean'] - base) / gap:.0%}" for label, r in table.items()
                  if label in ("poe", "lmh", "mdpo")]
        lines.append(f"Share of the test-cp gap between {suite.baseline} ({base:.3f}) and {bound} "
                     f"({table[bound]['test-cp']['mean']:.3f}) that each recipe closes: " + ", ".join(shares) + ".")
    return lines


RECIPES = Suite(
    name="recipes",
    title="Debiasing recipes against plain LoRA on a planted wording bias",
    setup="Each arm fine-tunes the build on synth:shapes-p90/train (the wording predicts the answer 90% of the time), "
          "200 steps x batch 32, LoRA r=16 on the LLM and the projector (configs/recipes/). Accuracy on 500 examples "
          "of test-cp (the cue is always wrong), test-balanced and test-id; swapped image = test-cp with each "
          "question shown the next example's image (a model that looks follows that image); follows wording "
          "(conflict probe) and language share (modality_shapley) on 200 test-balanced examples.",
    arms=(
        # the same budget of four settings each: plain LoRA's learning rate, each recipe's own knobs
        Arm("lora", "recipes/lora", grid=({"learning_rate": 1e-3}, {"learning_rate": 3e-4},
                                          {"learning_rate": 3e-3}, {"learning_rate": 1e-2})),
        Arm("poe", "recipes/poe", grid=(
            _recipe("poe", bias_expert="prior_table"), _recipe("poe", bias_expert="no_image"),
            _recipe("poe", bias_expert="prior_table", mode="lpf"), _recipe("poe", bias_expert="no_image", mode="lpf"))),
        Arm("lmh", "recipes/lmh", grid=(
            _recipe("lmh", bias_expert="prior_table", entropy_weight=0.1),
            _recipe("lmh", bias_expert="prior_table", entropy_weight=0.36),
            _recipe("lmh", bias_expert="no_image", entropy_weight=0.1),
            _recipe("lmh", bias_expert="no_image", entropy_weight=0.36))),
        Arm("mdpo", "recipes/mdpo", grid=(
            _recipe("mdpo", corruption="crop", rejected_answer="no_image", beta=1.0),
            _recipe("mdpo", corruption="crop", rejected_answer="no_image", beta=0.5),
            _recipe("mdpo", corruption="blank", rejected_answer="no_image", beta=1.0),
            _recipe("mdpo", corruption="crop", rejected_answer="none", beta=1.0))),
        # not a contender: how far a model that stops following the cue falls in-distribution (the floor on val)
        Arm("lora on unbiased data", "recipes/lora", overrides={"data": "synth:shapes-p00/train"}, contender=False),
    ),
    baseline="lora",
    base=biased_build,
    evaluate=evals.shift,
    columns={"test-cp": "test-cp", "test-balanced": "test-balanced", "test-id": "test-id",
             "audit/follows_text": "follows wording", "audit/language_share": "language share",
             "swap": "swapped image, test-cp"},
    floor=("lora on unbiased data", 0.0),
    untrained={"before fine-tuning": biased_build,
               "zoo:shapes-p00 (unbiased, not fine-tuned)": lambda seed: "zoo:shapes-p00"},
    notes=_gap_notes,
    # the zero-training control: the base build served with image-contrastive decoding (mbias.decoding), its alpha
    # chosen on val by the same rule; and the combination, poe's model served with the same decoding
    served=(Served("contrastive decoding", grid=("contrastive:alpha=0.5", "contrastive:alpha=1",
                                                 "contrastive:alpha=2")),
            Served("poe + contrastive decoding", source="poe", same_as="contrastive decoding")),
)

_SPEED_SETUP = ("Every parameter trained on synth:shapes-p90/train, 800 steps x batch 64, cosine "
                "(configs/imbalance/). Accuracy on 500 examples per split; image-only = test-balanced with the "
                "question masked; vision probe = linear read-out of the projector's features per question type "
                "(fitted on 3000 synth:shapes-p00/train images); vision share and follows wording from the audit's "
                "probes on 200 test-balanced examples.")

LEARNING_SPEED = Suite(
    name="learning-speed",
    title="The seed balancing recipes where their premise holds: learning speed from scratch",
    setup=_SPEED_SETUP,
    arms=(
        # three settings each: plain Adam's learning rate, each recipe's own knobs
        Arm("plain", "imbalance/lora", grid=({"learning_rate": 2e-3}, {"learning_rate": 1e-3},
                                             {"learning_rate": 4e-3})),
        Arm("miles", "imbalance/miles", grid=(_recipe("miles"), _recipe("miles", mu=0.33),
                                              _recipe("miles", mu=0.33, tau=0.1))),
        Arm("mnl", "imbalance/mnl", grid=(_recipe("mnl"), _recipe("mnl", weight=0.3),
                                          _recipe("mnl", weight=0.7, warmup_steps=100))),
        Arm("plain on unbiased data", "imbalance/lora", overrides={"data": "synth:shapes-p00/train"},
            contender=False),
    ),
    baseline="plain",
    base=scratch_build,
    evaluate=evals.learning_speed,
    columns={"test-cp": "test-cp", "test-id": "test-id", "test-balanced": "test-balanced",
             "image-only": "image-only", "probe": "vision probe", "audit/vision_share": "vision share",
             "audit/follows_text": "follows wording"},
    untrained={"before training": scratch_build},
    per_type=("test-cp", "probe"),
)


def _fixed(folder: str, recipes: tuple, variants: dict) -> tuple:
    """Arms at their config files' settings, one per recipe and grouping variant (suffix -> label)."""
    return tuple(Arm(r + (f" {label}" if sfx else ""), f"imbalance/{folder}/{r}{sfx}")
                 for r in recipes for sfx, label in variants.items())


def _variant_pairs(recipes: tuple, label: str) -> tuple:
    return tuple((r, f"{r} {label}") for r in recipes)


def late_fusion_base(seed: int) -> str:
    """The late-fusion model of run ``seed`` (zoo:scratch build ``seed`` + a head initialised with ``seed``), built
    once (late_fusion_model.py)."""
    from mbias.zoo import build_zoo_model, model_identity

    model_file = Path(__file__).with_name("late_fusion_model.py")
    key = hashlib.sha256((model_file.read_text() + model_identity(scratch_build(seed))).encode()).hexdigest()[:10]
    out = WORK / f"late-fusion-{key}" / f"s{seed}"
    if not (out / model_file.name).exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        build_late_fusion(build_zoo_model(scratch_build(seed).removeprefix("zoo:"), progress=False), out, seed)
    return str(out)


def build_late_fusion(src, out: Path, seed: int) -> Path:
    """A late-fusion model folder at ``out`` from the LLaVA folder ``src`` (its weights, a head initialised with
    ``seed``), loadable with ``trust_remote_code=True``. Written whole or not at all."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model_file = Path(__file__).with_name("late_fusion_model.py")
    if str(model_file.parent) not in sys.path:
        sys.path.insert(0, str(model_file.parent))
    from late_fusion_model import LateFusionLlava

    llava = LlavaForConditionalGeneration.from_pretrained(src)
    torch.manual_seed(seed)
    model = LateFusionLlava(llava.config)
    missing, unexpected = model.load_state_dict(llava.state_dict(), strict=False)
    if unexpected or not all(".late_head." in k for k in missing):
        raise RuntimeError(f"{src} is not a LLaVA whose weights LateFusionLlava takes: {missing}, {unexpected}")
    model.config.auto_map = {"AutoModelForImageTextToText": f"{model_file.stem}.LateFusionLlava"}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoProcessor.from_pretrained(src).save_pretrained(tmp)
    shutil.copy(model_file, tmp / model_file.name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _speed_variant(name: str, title: str, setup: str, arms: tuple, pairs: tuple = (), base=scratch_build,
                   reference: str | None = None) -> Suite:
    if reference:
        arms = (*arms, Arm("plain on unbiased data", reference, overrides={"data": "synth:shapes-p00/train"},
                           contender=False))
    return Suite(name=name, title=title, setup=setup + " " + _SPEED_SETUP.split(". ", 1)[1], arms=arms,
                 baseline="plain", base=base, evaluate=evals.learning_speed, columns=LEARNING_SPEED.columns,
                 untrained={"before training": base}, pairs=pairs, per_type=("test-cp", "probe"))


_STEER = ("plain", "miles", "ogm_ge", "cggm")
SUITES = {s.name: s for s in (
    RECIPES,
    LEARNING_SPEED,
    _speed_variant("routing", "Routed vs module-level parameter groups (LoRA r32 on the vision tower, projector, LLM)",
                   "LoRA r32 on the vision tower, projector and LLM, Adam lr 2e-3 (configs/imbalance/lora/); routed: "
                   "the LLM's LoRA split into an image-token and a text-token part.",
                   _fixed("lora", _STEER, {"": "module-level", "_routed": "routed"}), _variant_pairs(_STEER, "routed")),
    _speed_variant("sgd", "The seed recipes under SGD with momentum, the papers' optimizer",
                   "SGD with momentum 0.9 (configs/imbalance/sgd/); ogm_ge and cggm scale gradients (the papers' form).",
                   _fixed("sgd", ("plain", "ogm_ge", "msam", "sam", "miles", "mnl"), {"": ""})),
    _speed_variant("encoders", "Encoder-level vs module-level parameter groups under SGD",
                   "SGD with momentum 0.9 (configs/imbalance/sgd/); encoder-level: the language group is the token "
                   "embeddings alone, the LLM's layers train at the base rate.",
                   _fixed("sgd", ("plain", "ogm_ge", "miles", "cggm"), {"": "module-level", "_encoders": "encoders"}),
                   _variant_pairs(("plain", "ogm_ge", "miles", "cggm"), "encoders")),
    _speed_variant("overfit", "SAM and M-SAM in an overfitting regime (2,000 examples, 25 epochs)",
                   "SGD with momentum 0.9, lr 0.05, the first 2,000 training examples (configs/imbalance/overfit/).",
                   _fixed("overfit", ("plain", "sam", "msam"), {"": ""})),
    _speed_variant("late-fusion", "The late-fusion control: image and question meet only in the answer's logits",
                   "A late-fusion model (late_fusion_model.py: the LLM reads the question without the image, an MLP "
                   "head reads the projector's features; logits summed), SGD with momentum 0.9 "
                   "(configs/imbalance/late_fusion/).",
                   _fixed("late_fusion", ("plain", "ogm_ge", "sam", "msam", "miles", "mnl", "cggm"), {"": ""}),
                   base=late_fusion_base, reference="imbalance/late_fusion/plain"),
)}
