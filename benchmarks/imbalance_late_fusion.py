"""The late-fusion control of the learning-speed benchmark: the seed recipes where their papers' premise holds most directly.

In a decoder MLLM the LLM is both the "language" side and the place where image and question meet, so a recipe
that slows the language side also slows the fusion. Here they meet only in the answer's logits
(``late_fusion_model.LateFusionLlava``): the LLM reads the prompt without the image tokens, and the ViT and
projector's features go through an MLP head to vocabulary logits added to the LLM's at the first answer token,
i.e. an encoder per modality and a linear fusion, the models OGM-GE, M-SAM, MILES, MNL and CGGM were built and
measured on. Each base is zoo:scratch build i (random initialisation) plus a fresh head (seed i), trained with
every parameter on synth:shapes-p90/train, 800 steps x batch 64, SGD with momentum 0.9 (the OGM-GE and M-SAM
papers' optimizer; learning rate chosen for plain training on val), recipes in the papers' form (gradients
scaled, not learning rates), their settings chosen on val where a range was tried. The recipes run unchanged:
the same code, the same ablated passes (question masked, image replaced by the blank baseline), the same
parameter groups (vision = ViT, projector and head; language = the LLM). A port that cannot beat plain training
here has a bug.

Measures, intervals and pairing as in ``imbalance.py``, plus plain training on unbiased data (the bound on the
image side). Arms in ``configs/imbalance/late_fusion/``; their ``model:`` is the seed-0 base this script builds
(``--build-base`` prints where), loaded with ``--trust-remote-code``.

    python benchmarks/imbalance_late_fusion.py --select  # -> results/imbalance_late_fusion_selection.md + configs
    python benchmarks/imbalance_late_fusion.py           # -> results/imbalance_late_fusion.{json,md}
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

from imbalance import WORK, _built, scratch_build
from imbalance_routing import Suite, main

MODEL_FILE = Path(__file__).with_name("late_fusion_model.py")


def build_late_fusion(src, out: Path, seed: int) -> Path:
    """A late-fusion model folder at ``out`` from the LLaVA folder ``src`` (its weights, a head initialised with
    ``seed``), loadable with ``trust_remote_code=True``. Written whole or not at all."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    if str(MODEL_FILE.parent) not in sys.path:
        sys.path.insert(0, str(MODEL_FILE.parent))
    from late_fusion_model import LateFusionLlava

    llava = LlavaForConditionalGeneration.from_pretrained(src)
    torch.manual_seed(seed)
    model = LateFusionLlava(llava.config)
    missing, unexpected = model.load_state_dict(llava.state_dict(), strict=False)
    if unexpected or not all(".late_head." in k for k in missing):
        raise RuntimeError(f"{src} is not a LLaVA whose weights LateFusionLlava takes: {missing}, {unexpected}")
    model.config.auto_map = {"AutoModelForImageTextToText": f"{MODEL_FILE.stem}.LateFusionLlava"}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    AutoProcessor.from_pretrained(src).save_pretrained(tmp)
    shutil.copy(MODEL_FILE, tmp / MODEL_FILE.name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def late_fusion_base(seed: int) -> str:
    """The late-fusion model of run ``seed`` (zoo build ``seed`` + a head initialised with ``seed``), built once."""
    from mbias.zoo import model_identity

    key = hashlib.sha256((MODEL_FILE.read_text() + model_identity(scratch_build(seed))).encode()).hexdigest()[:10]
    out = WORK / f"late-fusion-{key}" / f"s{seed}"
    if not (out / MODEL_FILE.name).exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        build_late_fusion(_built(scratch_build(seed)), out, seed)
    return str(out)


LATE_FUSION = Suite(
    script="imbalance_late_fusion.py", folder="late_fusion", variants={"": "late fusion"},
    grid={"ogm_ge": [{"mode": "gradient"}, {"mode": "gradient", "alpha": 0.1}, {"mode": "gradient", "alpha": 0.8}],
          "sam": [{}], "msam": [{}], "miles": [{}, {"mu": 0.33}], "mnl": [{}],
          # the released code's batch-to-batch improvement, improvement over 50-step windows, no direction term
          "cggm": [{"mode": "gradient"}, {"mode": "gradient", "window": 50}, {"mode": "gradient", "lam": 0.0}]},
    title="The late-fusion control",
    setup="with late fusion (late_fusion_model.py: the LLM reads the question without the image, an MLP head "
          "reads the projector's features; logits summed), every parameter trained by SGD (momentum 0.9, cosine), "
          "synth:shapes-p90/train, 800 steps x batch 64 (configs/imbalance/late_fusion/)",
    # the image side needs a larger step than the MLLM's (at 0.02-0.1 it learns nothing even from unbiased data)
    plain_grid=[{"learning_rate": 0.05}, {"learning_rate": 0.1}, {"learning_rate": 0.2}, {"learning_rate": 0.5}],
    base=late_fusion_base, reference=True, finetune_flags="--trust-remote-code ")

if __name__ == "__main__":
    if "--build-base" in sys.argv:
        print(late_fusion_base(0))
    else:
        main(LATE_FUSION, __doc__)
