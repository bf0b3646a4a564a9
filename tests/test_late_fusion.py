"""The late-fusion control's model (benchmarks/late_fusion_model.py): it loads through mbias's own path as remote
code, the image reaches the answer only through its head and only at the first answer token, and the scorer's
path (precomputed features, a count of kept logits) scores what the recipes' path (pixels, a mask) does."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def late_fusion(tiny_model_dir, tmp_path_factory):
    sys.path.insert(0, str(BENCHMARKS))
    from suites import build_late_fusion

    from mbias.finetune.data import BatchSpec, RecipeCollator
    from mbias.models import load_model
    from mbias.synth import load_synth
    from mbias.variants import IMAGE_MASKED, QUESTION_MASKED

    folder = build_late_fusion(tiny_model_dir("llava"), tmp_path_factory.mktemp("late") / "model", seed=0)
    scorer = load_model(str(folder), device="cpu", trust_remote_code=True)
    examples = [load_synth("shapes-p90/test-cp")[i] for i in range(4)]
    batch = RecipeCollator(scorer, BatchSpec(variants=frozenset({QUESTION_MASKED, IMAGE_MASKED})))([scorer.encode(e) for e in examples])
    return scorer, examples, batch


def test_it_loads_as_remote_code_with_its_head_on_the_vision_side(late_fusion):
    scorer, _, _ = late_fusion
    assert type(scorer.model).__name__ == "LateFusionLlava"
    groups = scorer.parameter_groups()
    assert any(".late_head." in n for n in groups["vision"]) and not groups["other"]


def test_the_scorer_scores_what_the_recipes_train_on(late_fusion):
    from mbias.finetune.data import answer_forward

    scorer, examples, batch = late_fusion
    with torch.no_grad():
        sums, _, _ = answer_forward(scorer.model, batch)
    scored = torch.stack([scorer.score(scorer.prepare(e))[0] for e in examples])
    assert torch.allclose(sums, scored, atol=1e-4)


def test_the_image_moves_only_the_first_answer_tokens_logits(late_fusion):
    from mbias.finetune.data import BatchSpec, RecipeCollator, answer_logits, first_of_row
    from mbias.variants import FULL, IMAGE_MASKED, QUESTION_MASKED

    scorer, examples, _ = late_fusion
    # answers of several tokens, so that the positions after the first are tested too
    longer = [dataclasses.replace(e, answer=f"a {e.answer} one", choices=None) for e in examples]
    batch = RecipeCollator(scorer, BatchSpec(variants=frozenset({QUESTION_MASKED, IMAGE_MASKED})))([scorer.encode(e) for e in longer])
    with torch.no_grad():
        full, _, rows, _ = answer_logits(scorer.model, batch, FULL)
        blank, _, _, _ = answer_logits(scorer.model, batch, IMAGE_MASKED)
    first = first_of_row(rows)
    assert (~first).any()
    assert not torch.allclose(full[first], blank[first])
    assert torch.equal(full[~first], blank[~first])
