"""Probe invariants on tiny models: Shapley efficiency, null players, determinism, batching, captum agreement;
and the clustered bootstrap behind every interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mbias.example import Example
from mbias.models import ScoringConfig, load_model
from mbias.models.families import FAMILIES
from mbias.probes import PROBES, SampleContext
from mbias.probes.mm_shap import MMShapConfig
from mbias.shapley import exact_shapley, permutation_shapley
from mbias.tiny import BUILDERS

# every registered model type that has a tiny builder (test_scorers checks that each family has one)
MODEL_TYPES = [t for family in FAMILIES for t in family.model_types if t in BUILDERS]


def _example(image, question="What colour is it?", **kw):
    fields = dict(id="ex0", image=image, question=question, answer="red", choices=["red", "green", "blue"])
    fields.update(kw)
    return Example(**fields)


@pytest.fixture(scope="module")
def llava(tiny_model_dir):
    return load_model(tiny_model_dir("llava"), device="cpu", config=ScoringConfig(patch_grid=2))


def _ctx(scorer, image, **kw):
    return SampleContext(scorer, scorer.prepare(_example(image, **kw)), run_seed=3, swap_image=image.rotate(90))


def test_shapley_estimators_on_a_known_game():
    """A weighted-majority-plus-interaction game with hand-computable values."""
    w = torch.tensor([1.0, 2.0, 0.5, 0.0])  # player 3 is a null player

    def value(masks):
        m = masks.float()
        return m @ w + 3.0 * m[:, 0] * m[:, 1]  # the interaction is split equally between players 0 and 1

    exact = exact_shapley(value, 4)
    assert np.allclose(exact.phi, [2.5, 3.5, 0.5, 0.0], atol=1e-9)
    approx = permutation_shapley(value, 4, 10, rng=np.random.default_rng(0))
    assert approx.phi.sum() == pytest.approx(exact.v_full - exact.v_empty, abs=1e-9)  # efficiency, always
    assert approx.phi[3] == 0.0
    assert np.allclose(approx.phi, exact.phi, atol=1e-9)  # this game is additive up to a pairwise term


@pytest.mark.parametrize("family", MODEL_TYPES)
def test_modality_shapley_is_efficient_and_matches_mm_shap_totals(family, tiny_model_dir, shapes_image):
    scorer = load_model(tiny_model_dir(family), device="cpu", config=ScoringConfig(patch_grid=2))
    ctx = _ctx(scorer, shapes_image)
    ms = PROBES.get("modality_shapley")().run(ctx)
    assert ms["phi_image"] + ms["phi_text"] == pytest.approx(ms["v_full"] - ms["v_none"], abs=1e-6)
    assert ms["vision_share"] + ms["language_share"] == pytest.approx(1.0)
    mm = PROBES.get("mm_shap")(MMShapConfig(grid=2, estimator="exact")).run(ctx)
    assert mm["n_text"] + mm["n_image"] <= 12
    assert sum(mm["phi"]) == pytest.approx(ms["v_full"] - ms["v_none"], abs=1e-4)
    assert mm["v_empty"] == pytest.approx(ms["v_none"], abs=1e-5)


def test_exact_enumeration_agrees_with_captum_shapley_values(llava, shapes_image):
    from mbias.captum_input import ImageTextInput, captum_shapley

    # captum's ShapleyValues walks all n! orderings: keep n small (the question tokens + 2 image halves)
    prepared = llava.prepare(_example(shapes_image, question="colour?"))
    inp = ImageTextInput(llava, prepared, grid=2)
    if inp.n_itp_features > 7:
        inp = ImageTextInput(llava, prepared, grid=1)
    assert inp.n_itp_features <= 7
    ours = exact_shapley(inp.value, inp.n_itp_features)
    theirs = captum_shapley(inp, "exact", n_samples=0, batch_size=64, seed=0)
    assert np.allclose(ours.phi, theirs.phi, atol=1e-5)


def test_mm_shap_estimators_run_and_report_budget(llava, shapes_image):
    ctx = _ctx(llava, shapes_image)
    for estimator in ("permutation", "captum_sampling", "captum_kernel"):
        rec = PROBES.get("mm_shap")(MMShapConfig(grid=2, estimator=estimator, n_permutations=4,
                                                 kernel_samples=40)).run(ctx)
        assert rec["n_evaluations"] > 0 and len(rec["phi"]) == rec["n_text"] + rec["n_image"]
        assert 0 <= rec["t_shap"] <= 1 and rec["t_shap"] + rec["v_shap"] == pytest.approx(1.0)


def test_same_seed_same_records_and_batching_does_not_matter(tiny_model_dir, shapes_image):
    small = load_model(tiny_model_dir("llava"), device="cpu", config=ScoringConfig(patch_grid=2, batch_size=3))
    big = load_model(tiny_model_dir("llava"), device="cpu", config=ScoringConfig(patch_grid=2, batch_size=64))
    for name, cfg in (("mm_shap", MMShapConfig(grid=2, estimator="permutation", n_permutations=6, batch_size=5)),
                      ("degradation", None)):
        a = PROBES.get(name)(cfg).run(_ctx(small, shapes_image))
        b = PROBES.get(name)(cfg).run(_ctx(big, shapes_image))
        again = PROBES.get(name)(cfg).run(_ctx(big, shapes_image))
        assert again == b
        for key, value in a.items():
            if isinstance(value, float):
                assert value == pytest.approx(b[key], abs=1e-5), key
            elif isinstance(value, list) and value and isinstance(value[0], float):
                assert np.allclose(value, b[key], atol=1e-5), key


def _zero_projector(scorer):
    with torch.no_grad():
        for part in scorer._parts(scorer.projector_modules):
            for p in part.parameters():
                p.zero_()


@pytest.mark.parametrize("family", MODEL_TYPES)
def test_a_model_that_cannot_see_has_no_vision_share(family, tiny_model_dir, shapes_image):
    scorer = load_model(tiny_model_dir(family), device="cpu", config=ScoringConfig(patch_grid=2))
    _zero_projector(scorer)
    ctx = _ctx(scorer, shapes_image)
    ms = PROBES.get("modality_shapley")().run(ctx)
    assert ms["vision_share"] < 0.01
    mm = PROBES.get("mm_shap")(MMShapConfig(grid=2, estimator="permutation", n_permutations=4)).run(ctx)
    assert mm["v_shap"] < 0.01


@pytest.mark.parametrize("family", MODEL_TYPES)
def test_a_model_that_cannot_read_has_no_language_share(family, tiny_model_dir, shapes_image):
    scorer = load_model(tiny_model_dir(family), device="cpu", config=ScoringConfig(patch_grid=2))
    prepared = scorer.prepare(_example(shapes_image))
    ids = set(prepared.prompt_ids[prepared.question_positions].tolist()) | {scorer.text_baseline_id()}
    with torch.no_grad():
        scorer.model.get_input_embeddings().weight[sorted(ids)] = 0.0
    ctx = SampleContext(scorer, prepared, swap_image=shapes_image.rotate(90))
    ms = PROBES.get("modality_shapley")().run(ctx)
    assert ms["language_share"] < 0.01
    mm = PROBES.get("mm_shap")(MMShapConfig(grid=2, estimator="permutation", n_permutations=4)).run(ctx)
    assert mm["t_shap"] < 0.01


def test_ablation_attention_degradation_pdm_records(llava, shapes_image):
    ctx = _ctx(llava, shapes_image)
    ab = PROBES.get("ablation")().run(ctx)
    assert {"acc_full", "acc_no_image", "acc_blank_image", "acc_noise_image", "acc_swapped_image",
            "acc_no_text", "flip_swap", "visual_info_gain"} <= set(ab)
    assert ab["logprob_full"] == pytest.approx(float(llava.score(ctx.prepared)[0]), abs=1e-5)
    att = PROBES.get("attention")().run(ctx)
    assert 0 < att["image_attention_share"] < 1 and len(att["per_layer"]) == 2
    assert att["image_attention_share"] + att["question_attention_share"] <= 1 + 1e-6
    deg = PROBES.get("degradation")().run(ctx)
    assert len(deg["image_accuracy"]) == 10 and 0 <= deg["image_auc"] <= 1
    pdm = PROBES.get("pdm")().run(ctx)
    assert pdm["n_steps"] == len(pdm["hellinger"]) and all(0 <= h <= 1 for h in pdm["hellinger"])


def test_summaries_resample_images_not_questions(llava, shapes_image):
    records = {n: [] for n in PROBES.names()}
    for i, colour in enumerate(["red", "green", "blue"]):
        ctx = SampleContext(llava, llava.prepare(_example(shapes_image, id=f"e{i}", answer=colour)),
                            swap_image=shapes_image.rotate(90))
        for name in records:
            cfg = MMShapConfig(grid=2, estimator="permutation", n_permutations=4) if name == "mm_shap" else None
            records[name].append(PROBES.get(name)(cfg).run(ctx))
    shares = [r["language_share"] for r in records["modality_shapley"]]
    assert len(set(shares)) == 3  # three answers, three different games
    probe = PROBES.get("modality_shapley")()
    # three questions about one image are one cluster: resampling it always gives the same mean
    one_image = probe.summarize(records["modality_shapley"], ["img"] * 3)["language_share"]
    assert one_image["mean"] == pytest.approx(np.mean(shares))
    assert one_image["ci95"] == [one_image["mean"], one_image["mean"]]
    three_images = probe.summarize(records["modality_shapley"], ["a", "b", "c"])["language_share"]
    lo, hi = three_images["ci95"]
    assert min(shares) <= lo < three_images["mean"] < hi <= max(shares)
    deg = PROBES.get("degradation")().summarize(records["degradation"], ["a", "b", "c"])
    assert math.isfinite(deg["image"]["auc"])
    assert len(deg["image"]["accuracy_ci95"]) == len(deg["image"]["rates"])


def _verdict_of(scorer, examples, swap_image):
    """The audit's verdict over ``examples`` from modality_shapley and conflict (question alone = the baseline
    image, so a model that cannot see gives exactly its full answer)."""
    from mbias.probes.conflict import ConflictConfig
    from mbias.verdict import verdict

    probes = {"modality_shapley": PROBES.get("modality_shapley")(),
              "conflict": PROBES.get("conflict")(ConflictConfig(image_absent="baseline"))}
    records = {n: [] for n in probes}
    for ex in examples:
        ctx = SampleContext(scorer, scorer.prepare(ex), swap_image=swap_image)
        for name, probe in probes.items():
            records[name].append(probe.run(ctx))
    groups = [ex.id for ex in examples]
    summaries = {n: probes[n].summarize(r, groups) for n, r in records.items()}
    return verdict(summaries, 0.05), summaries["conflict"]


def _examples(n=10):
    from mbias.synth import load_synth

    ds = load_synth("shapes-p90/test-balanced")
    return [ds[i] for i in range(n)]


@pytest.mark.parametrize("family", MODEL_TYPES)
def test_blind_models_read_language_dominant_and_deaf_ones_vision_dominant(family, tiny_model_dir, shapes_image):
    from mbias.reports.content import verdict_label

    examples = _examples()
    blind = load_model(tiny_model_dir(family), device="cpu", config=ScoringConfig(patch_grid=2))
    _zero_projector(blind)
    v, conflict = _verdict_of(blind, examples, shapes_image)
    assert (verdict_label(v), v["severity"]) == ("language-dominant", "severe")
    if conflict["n_text_conflicts"]:  # it gives the question-alone answer whatever the image shows
        assert conflict["follows_text"]["mean"] == 1.0

    deaf = load_model(tiny_model_dir(family), device="cpu", config=ScoringConfig(patch_grid=2))
    ids = {deaf.text_baseline_id()}
    for ex in examples:
        prepared = deaf.prepare(ex)
        ids |= set(prepared.prompt_ids[prepared.question_positions].tolist())
    with torch.no_grad():
        deaf.model.get_input_embeddings().weight[sorted(ids)] = 0.0
    v, conflict = _verdict_of(deaf, examples, shapes_image)
    assert (verdict_label(v), v["severity"]) == ("vision-dominant", "severe")
    if conflict["n_image_conflicts"]:  # it gives the image-alone answer whatever was asked
        assert conflict["follows_image"]["mean"] == 1.0
