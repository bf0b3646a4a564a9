"""mm_shap against the reference (issue 32): ``definition: reference`` plays the game of Heidelberg-NLP/CC-SHAP-VLM,
checked against that procedure written again with plain transformers and the ``shap`` package's Permutation
explainer (benchmarks/mm_shap_reference.py); a flat image is undefined, not 1.0; pixel masking covers every pixel
whatever the grid. On the pinned zoo model (shipped, nothing to build)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mbias.errors import ConfigError
from mbias.example import Example
from mbias.models import ScoringConfig, load_model
from mbias.probes import PROBES, SampleContext
from mbias.probes.mm_shap import MMShapConfig, ReferenceGame, reference_permutations, t_shap
from mbias.shapley import exact_shapley

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "mm_shap_reference.py"
ZOO = "zoo:shapes-p90"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("mbias_benchmark_mm_shap_reference", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scorer():
    return load_model(ZOO, device="cpu")


@pytest.fixture(scope="module")
def scene():
    from mbias.synth import load_synth

    return load_synth("shapes-p90/test-balanced")[0].image


def _example(image, question="What colour is it?", answer="red", choices=("red", "green", "blue"), id="t0"):
    return Example(id=id, image=image, question=question, answer=answer, choices=list(choices))


def test_reference_definition_is_the_reference_game_and_agrees_with_shap(scorer, scene, bench):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mbias.zoo import zoo_model_path

    path = zoo_model_path(ZOO.removeprefix("zoo:"))
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    ex = _example(scene, question="What colour?")  # 7 text players, 4 cells: 2,048 coalitions to enumerate
    prepared = scorer.prepare(ex)
    game = ReferenceGame(scorer, prepared, grid=2)  # 2x2 cells keep exact enumeration cheap
    theirs = bench.ReferenceReimplementation(model, processor, ex.image, ex.question, grid=2)

    # the same game: players (template tokens included), output token, and value of any coalition
    assert game.n_text == int((~theirs.fixed).sum()) and game.n_image == theirs.n_image == 4
    assert {"USER", " ASSISTANT"} <= set(game.values[:game.n_text])  # the template's tokens are players
    assert game.token == theirs.token and game.mask_token == "_"
    n = game.n_players
    masks = np.random.default_rng(0).random((24, n)) < 0.5
    masks[0], masks[1] = True, False
    ours = game.value(torch.from_numpy(masks)).numpy()
    other = theirs.predict(theirs.rows_for(game.text_positions.tolist(), masks))
    assert np.abs(ours - other).max() < 1e-4
    assert abs(ours[0] - ours[1]) > 1.0  # the game is not flat

    # both estimators, each at the reference's budget, against exact enumeration of that game
    exact = exact_shapley(game.value, n, batch_size=512)
    t_exact, _ = t_shap(exact.phi, game.n_text)
    rec = PROBES.get("mm_shap")(MMShapConfig(definition="reference", grid=2)).run(
        SampleContext(scorer, prepared, run_seed=0))
    assert rec["value_function"] == "output_logit" and rec["definition"] == "reference"
    assert rec["reference_permutations"] == 2 * (600 // (2 * (game.n_prompt_tokens + 4) + 1))
    assert rec["efficiency_gap"] == pytest.approx(0.0, abs=1e-4)
    res = theirs.explain(seed=0)
    phi_shap = res["phi"]
    assert np.all(phi_shap[theirs.n_image:][theirs.fixed] == 0)  # never-masked tokens are null players there
    # shap's values in mbias's player order: the maskable tokens, then the cells
    index = {pos: k for k, pos in enumerate(theirs.collapsed_pos)}
    phi_theirs = np.concatenate([[phi_shap[theirs.n_image + index[p]] for p in game.text_positions.tolist()],
                                 phi_shap[:theirs.n_image]])
    # the budget is ~40 permutations, so the estimates carry Monte-Carlo noise (seed to seed ~0.03 in T-SHAP); a
    # change of game (players, masks, value) moves T-SHAP by 0.1-0.3 (benchmarks/results/mm_shap_reference.md)
    for phi, t in ((np.array(rec["phi"]), rec["t_shap"]), (phi_theirs, res["t_shap"])):
        assert abs(t - t_exact) < 0.06
        assert np.corrcoef(phi, exact.phi)[0, 1] > 0.95
    assert abs(rec["t_shap"] - res["t_shap"]) < 0.08


def test_reference_budget_follows_shap_max_evals():
    # 600 // (2n + 1) forward-and-backward passes; 700, 800, 900 tried when that is 0; one pair at the least
    assert reference_permutations(10) == 2 * 28
    assert reference_permutations(44) == 2 * 6
    assert reference_permutations(300) == 2  # 600 < 601, 700 // 601 = 1
    assert reference_permutations(500) == 2  # beyond 900: the reference fails, mbias keeps one pair
    with pytest.raises(ConfigError, match="reference definition"):
        MMShapConfig(definition="reference", estimator="captum_kernel")
    with pytest.raises(ConfigError, match="definition must be"):
        MMShapConfig(definition="papers")


def test_flat_image_is_undefined_not_all_text(scorer, scene):
    """The mean-colour baseline of a one-colour picture is the picture: no image player can matter, so T-SHAP
    would read 1.0 whatever the model does. It is undefined, left out of the mean and counted."""
    flat = Image.new("RGB", (32, 32), (40, 51, 33))  # an empty zoo scene: background only
    probe = PROBES.get("mm_shap")(MMShapConfig(n_permutations=4))
    q = dict(question="Is there a shape in the image?", answer="no", choices=("yes", "no"))
    empty = probe.run(SampleContext(scorer, scorer.prepare(_example(flat, id="flat", **q)), run_seed=0))
    assert empty["t_shap"] is None and empty["v_shap"] is None and "blank baseline equals the image" in \
        empty["t_shap_undefined"]
    assert all(p == 0.0 for p in empty["phi"][empty["n_text"]:])  # what 1.0 came from
    busy = probe.run(SampleContext(scorer, scorer.prepare(_example(scene, id="busy", **q)), run_seed=0))
    assert busy["t_shap_undefined"] is None and 0 < busy["t_shap"] < 1
    summary = probe.summarize([empty, busy], ["flat", "busy"])
    assert summary["t_shap"]["n"] == 1 and summary["t_shap"]["n_missing"] == 1
    assert summary["t_shap"]["mean"] == pytest.approx(busy["t_shap"])
    assert summary["n_undefined_baseline"] == 1 and summary["definition"] == "mbias"
    rows = dict(type(probe).report_rows(summary))
    assert rows["samples left out (the baseline equals the image)"] == "1"
    assert rows["definition"].startswith("mbias")
    # a baseline that differs from the picture credits the empty scene's image
    black = load_model(ZOO, device="cpu", config=ScoringConfig(image_baseline="black"))
    seen = probe.run(SampleContext(black, black.prepare(_example(flat, id="flat", **q)), run_seed=0))
    assert seen["t_shap_undefined"] is None and seen["v_shap"] > 0.01
    # the reference's black baseline cannot mask a black picture either
    dark = Image.new("RGB", (32, 32), (0, 0, 0))
    ref = PROBES.get("mm_shap")(MMShapConfig(definition="reference", grid=2, max_evals=60))
    rec = ref.run(SampleContext(scorer, scorer.prepare(_example(dark, id="dark", **q)), run_seed=0))
    assert rec["t_shap"] is None and "black baseline equals the image" in rec["t_shap_undefined"]
    assert dict(type(ref).report_rows(ref.summarize([rec], ["dark"])))["definition"].startswith("reference")


@pytest.mark.parametrize("grid", [5, 6, 7])
def test_pixel_masking_covers_every_pixel_on_a_grid_finer_than_the_tokens(scene, grid):
    """The zoo model sees 4x4 tokens; a 5x5-7x7 pixel grid has cells holding no token centre, which are still
    pixels the tower sees: every cell is a player, and masking them all is the baseline image."""
    from mbias.models.geometry import paint_cells

    pixel = load_model(ZOO, device="cpu", config=ScoringConfig(masking="pixel"))
    p = pixel.prepare(_example(scene))
    assert p.n_image_tokens == 16
    groups = pixel.patch_groups(p, grid)
    assert groups.n == grid * grid
    blank = pixel.baseline_image(p, "blank")
    painted = paint_cells(p.image, blank, groups.cells, grid, p.view_box)
    assert np.array_equal(np.asarray(painted), np.asarray(blank))  # no pixel left unmasked
    all_masked = pixel.score(p, torch.zeros(1, groups.n, dtype=torch.bool), grid=grid)
    coarse = pixel.score(p, torch.zeros(1, pixel.patch_groups(p, 2).n, dtype=torch.bool), grid=2)
    assert float(all_masked[0]) == pytest.approx(float(coarse[0]), abs=1e-5)
    # feature-level masking has nothing to mask in an empty cell: those stay out of the players
    feature = load_model(ZOO, device="cpu")
    assert feature.patch_groups(feature.prepare(_example(scene)), grid).n < grid * grid


def test_a_grid_finer_than_the_pixels_is_refused(scene):
    pixel = load_model(ZOO, device="cpu", config=ScoringConfig(masking="pixel"))
    ctx = SampleContext(pixel, pixel.prepare(_example(scene)), run_seed=0)
    with pytest.raises(ConfigError, match="finer than the image.*32 pixels"):
        PROBES.get("mm_shap")(MMShapConfig(grid=33, n_permutations=2)).run(ctx)
