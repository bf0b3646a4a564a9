"""Model adapters on tiny models of every family: load, prepare, score, and the invariants scoring must keep."""

from __future__ import annotations

import pytest
import torch

from mbias.example import Example
from mbias.models import ScoringConfig, load_model
from mbias.models.families import FAMILIES
from mbias.tiny import BUILDERS

MODEL_TYPES = [t for family in FAMILIES for t in family.model_types if t in BUILDERS]


def test_every_registered_family_has_a_tiny_model():
    """The tests below run on a tiny model per model type; a family without one would go untested."""
    for family in FAMILIES:
        assert set(family.model_types) & set(BUILDERS), f"{family.family}: no builder in mbias.tiny.BUILDERS"


def _example(image, **kw):
    fields = dict(id="ex0", image=image, question="What colour is the circle?", answer="red",
                  choices=["red", "green", "blue"])
    fields.update(kw)
    return Example(**fields)


def _reference_logprob(scorer, prepared):
    """log p(answer) from the model's own forward on processor output (pixel_values, no scorer shortcuts)."""
    prompt = scorer.build_prompt(prepared.example.question, True)
    inputs = scorer.process(prompt, prepared.image)
    n_ans = prepared.answer_ids.numel()
    ids = torch.cat([inputs["input_ids"], prepared.answer_ids.unsqueeze(0)], dim=1)
    kwargs = {k: v for k, v in inputs.items() if k not in ("input_ids", "labels")}
    kwargs["input_ids"] = ids
    for key, fill in (("attention_mask", 1), ("token_type_ids", 1), ("mm_token_type_ids", 0)):
        if key in kwargs:
            kwargs[key] = torch.cat([kwargs[key], torch.full((1, n_ans), fill, dtype=kwargs[key].dtype)], dim=1)
    with torch.no_grad():
        logits = scorer.model(**kwargs).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    P = inputs["input_ids"].shape[1]
    return float(sum(logp[P - 1 + t, prepared.answer_ids[t]] for t in range(n_ans)))


@pytest.fixture(scope="module", params=MODEL_TYPES)
def scorer(request, tiny_model_dir):
    return load_model(tiny_model_dir(request.param), device="cpu")


def test_prepare_locates_question_image_and_answer(scorer, shapes_image):
    p = scorer.prepare(_example(shapes_image))
    assert "".join(p.question_tokens).strip() == "What colour is the circle?"
    assert p.n_image_tokens > 0 and p.features.shape[0] == p.n_image_tokens
    assert set(p.image_positions.tolist()).isdisjoint(p.question_positions.tolist())
    assert (p.prompt_ids[p.image_positions] == scorer.image_token_id).all()
    # every cell of the default 4x4 grid holds at least one image token on these models
    groups = scorer.patch_groups(p)
    assert groups.n == scorer.config.patch_grid ** 2
    assert set(groups.token_group.tolist()) == set(range(groups.n))
    # a grid finer than the token raster keeps only the non-empty cells as players
    fine = scorer.patch_groups(p, grid=12)
    assert fine.n <= p.n_image_tokens and set(fine.token_group.tolist()) == set(range(fine.n))
    assert scorer.tokenizer.decode(p.answer_ids).strip() == "red"


def test_unmasked_score_equals_models_own_forward(scorer, shapes_image):
    p = scorer.prepare(_example(shapes_image))
    ours = float(scorer.score(p)[0])
    assert ours == pytest.approx(_reference_logprob(scorer, p), abs=1e-5)


def test_batching_and_order_do_not_change_scores(scorer, shapes_image):
    p = scorer.prepare(_example(shapes_image))
    G, Q = scorer.config.patch_grid ** 2, p.n_question
    gen = torch.Generator().manual_seed(0)
    ik = torch.rand(6, G, generator=gen) > 0.5
    tk = torch.rand(6, Q, generator=gen) > 0.5
    ik[0], tk[0] = True, True  # the unmasked variant, inside a batch of masked ones
    batch = scorer.score(p, ik, tk)
    single = scorer.score(p, ik[:1], tk[:1])
    assert float(batch[0]) == pytest.approx(float(single[0]), abs=1e-5)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert torch.allclose(scorer.score(p, ik[perm], tk[perm]), batch[perm], atol=1e-5)
    # masked variants really differ from the full input
    assert not torch.allclose(batch[1:], batch[:1].expand(5), atol=1e-6)


def test_small_batch_size_gives_same_scores(tiny_model_dir, shapes_image):
    big = load_model(tiny_model_dir("llava"), device="cpu")
    small = load_model(tiny_model_dir("llava"), device="cpu", config=ScoringConfig(batch_size=2))
    ex = _example(shapes_image)
    ik = torch.rand(5, 16, generator=torch.Generator().manual_seed(1)) > 0.5
    a = big.score(big.prepare(ex), ik)
    b = small.score(small.prepare(ex), ik)
    assert torch.allclose(a, b, atol=1e-5)


def test_choices_scores_match_single_answer_scores(scorer, shapes_image):
    ex = _example(shapes_image)
    p = scorer.prepare(ex)
    per_choice = scorer.score(p, answers=p.choice_ids)[0]
    for i, choice in enumerate(ex.choices):
        alone = scorer.prepare(_example(shapes_image, answer=choice))
        assert float(per_choice[i]) == pytest.approx(float(scorer.score(alone)[0]), abs=1e-5)
    pred = scorer.predict(p)
    assert pred.text == ex.choices[int(per_choice.argmax())]


def test_pixel_masking_of_every_group_equals_the_baseline_image(scorer, shapes_image):
    """Painting all cells with the baseline is the baseline image, whichever masking level computes it."""
    G = scorer.config.patch_grid ** 2
    none_kept = torch.zeros(1, G, dtype=torch.bool)
    p = scorer.prepare(_example(shapes_image))
    feature_level = scorer.score(p, none_kept)
    scorer.config.masking = "pixel"
    try:
        p2 = scorer.prepare(_example(shapes_image))
        pixel_level = scorer.score(p2, none_kept)
        unmasked = scorer.score(p2)
    finally:
        scorer.config.masking = "feature"
    assert float(pixel_level[0]) == pytest.approx(float(feature_level[0]), abs=1e-4)
    assert float(unmasked[0]) == pytest.approx(float(scorer.score(p)[0]), abs=1e-5)


def _zero_projector(scorer):
    parts = scorer._parts(scorer.projector_modules)
    assert parts, f"{scorer.family}: no projector found"
    with torch.no_grad():
        for part in parts:
            for prm in part.parameters():
                prm.zero_()


@pytest.mark.parametrize("family", MODEL_TYPES)
def test_zeroed_projector_makes_every_image_variant_score_the_same(family, tiny_model_dir, shapes_image):
    scorer = load_model(tiny_model_dir(family), device="cpu")
    _zero_projector(scorer)
    p = scorer.prepare(_example(shapes_image))
    G = scorer.config.patch_grid ** 2
    ik = torch.rand(5, G, generator=torch.Generator().manual_seed(2)) > 0.5
    full = scorer.score(p)
    for baseline in ("blank", "noise", "black"):
        assert torch.allclose(scorer.score(p, ik, baseline=baseline), full.expand(5), atol=1e-5)
    swapped = scorer.score(p, torch.zeros(1, G, dtype=torch.bool), baseline="swap",
                            swap_image=shapes_image.rotate(90))
    assert float(swapped[0]) == pytest.approx(float(full[0]), abs=1e-5)


def test_lora_adapter_loads_and_changes_scores(tiny_model_dir, shapes_image, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_model(tiny_model_dir("llava"), device="cpu")
    targets = [n for n in base.module_names("language") if n.endswith(("q_proj", "v_proj"))]
    assert targets and not any("vision" in n for n in targets)
    peft_model = get_peft_model(base.model, LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "lora")
    ex = _example(shapes_image)
    fresh = load_model(tiny_model_dir("llava"), device="cpu")
    with_lora = load_model(tiny_model_dir("llava"), device="cpu", adapter=str(tmp_path / "lora"))
    before = float(fresh.score(fresh.prepare(ex))[0])
    after = float(with_lora.score(with_lora.prepare(ex))[0])
    assert abs(after - before) > 1e-4
    groups = with_lora.parameter_groups()
    assert any("lora_" in n for n in groups["language"]) and not any("lora_" in n for n in groups["vision"])


def test_text_only_prepare_has_no_image(scorer, shapes_image):
    p = scorer.prepare(_example(shapes_image), with_image=False)
    assert not p.has_image and p.n_image_tokens == 0 and p.n_question > 0
    assert torch.isfinite(scorer.score(p)).all()


def test_attention_maps_cover_the_whole_sequence(scorer, shapes_image):
    p = scorer.prepare(_example(shapes_image))
    att = scorer.attentions(p)
    n_layers = scorer.model.config.get_text_config().num_hidden_layers
    assert att.shape[0] == n_layers and att.shape[2] == p.answer_ids.numel()
    assert att.shape[3] == p.prompt_ids.numel() + p.answer_ids.numel()
    assert torch.allclose(att.sum(-1), torch.ones_like(att.sum(-1)), atol=1e-4)


def test_parameter_groups_split_vision_and_language(scorer):
    groups = scorer.parameter_groups()
    assert groups["vision"] and groups["language"] and not groups["other"]
    assert not set(groups["vision"]) & set(groups["language"])


def _permutation_coalitions(n_image: int, n_text: int, n_perm: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(image_keep, text_keep) of the prefix coalitions of ``n_perm`` random permutations: the rows mm_shap asks
    for, which share long prompt prefixes."""
    gen = torch.Generator().manual_seed(0)
    n = n_image + n_text
    rows = []
    for _ in range(n_perm):
        perm = torch.randperm(n, generator=gen)
        for k in range(n + 1):
            keep = torch.zeros(n, dtype=torch.bool)
            keep[perm[:k]] = True
            rows.append(keep)
    masks = torch.stack(rows)
    return masks[:, :n_image], masks[:, n_image:]


def test_prefix_cache_gives_the_full_forwards_scores_on_fewer_tokens(scorer, shapes_image, monkeypatch):
    """Variants that share a prompt prefix compute it once (``mbias.models.prefix``) and score what the full
    forward scores, on fewer language-model tokens. PaliGemma's prefix attends both ways, so a cached prefix cannot
    stand for it: the first-use check must find that and score in full."""
    from mbias.models import prefix

    # these prompts are ~30 tokens: plan as if a forward call cost 16 tokens, so that sharing pays here
    monkeypatch.setattr(prefix, "CALL", 16.0)
    cls = type(scorer)
    on = cls(scorer.model, scorer.processor, config=ScoringConfig(prefix_cache=True, batch_size=16))
    off = cls(scorer.model, scorer.processor, config=ScoringConfig(prefix_cache=False, batch_size=16))
    p = on.prepare(_example(shapes_image))
    ik, tk = _permutation_coalitions(on.patch_groups(p).n, p.n_question)
    tokens = []
    llm = on._parts(on.language_modules)[0]

    def count(module, args, kwargs):
        x = kwargs.get("inputs_embeds")
        tokens.append(int((x if x is not None else kwargs["input_ids"]).shape[:2].numel()))

    handle = llm.register_forward_pre_hook(count, with_kwargs=True)
    try:
        expected = off.score(p, ik, tk, answers=p.choice_ids)
        n_full = sum(tokens)
        first = on.score(p, ik, tk, answers=p.choice_ids)  # the first use checks the cache against the full forward
        tokens.clear()
        got = on.score(p, ik, tk, answers=p.choice_ids)
        n_shared = sum(tokens)
    finally:
        handle.remove()
    assert torch.allclose(got, expected, atol=1e-4)
    assert torch.equal(first, got)  # the checked batch scores as every later one does
    if scorer.family == "paligemma":
        assert on._prefix_ok is False and n_shared == n_full
    else:
        assert on._prefix_ok is True and n_shared < 0.8 * n_full


def test_prefix_cache_check_ignores_padding_after_short_answers(scorer, shapes_image, monkeypatch):
    """The first-use check compares only positions that predict an answer token: after a short answer both paths
    score padding, which Qwen2-VL's M-RoPE numbers differently in each (its full forward skips masked tokens),
    and a check there would switch the cache off for the run."""
    from mbias.models import prefix

    monkeypatch.setattr(prefix, "CALL", 16.0)
    sc = type(scorer)(scorer.model, scorer.processor, config=ScoringConfig(prefix_cache=True, batch_size=16))
    p = sc.prepare(_example(shapes_image, choices=["red", "a dark purple square"]))
    assert len({int(c.numel()) for c in p.choice_ids}) == 2
    sc.predict(p)  # the first planned batch: one prompt, choices of 1 and several tokens
    assert sc._prefix_ok is (scorer.family != "paligemma")


def test_prefix_cache_check_tolerates_half_precision_rounding(tiny_model_dir, shapes_image, monkeypatch):
    """A trained language model's logits are tens of nats, where one bfloat16 rounding step is 0.125: the two
    paths' rounding must not read as a disagreement and switch the cache off on every GPU."""
    from mbias.models import load_model, prefix

    monkeypatch.setattr(prefix, "CALL", 16.0)
    sc = load_model(str(tiny_model_dir("llava")), device="cpu", dtype="bfloat16",
                    config=ScoringConfig(prefix_cache=True, batch_size=16))
    with torch.no_grad():
        sc.model.get_output_embeddings().weight.mul_(60.0)  # |logit| ~ 30, as in a trained model
    p = sc.prepare(_example(shapes_image))
    ik, tk = _permutation_coalitions(sc.patch_groups(p).n, p.n_question)
    sc.score(p, ik, tk, answers=p.choice_ids)
    assert sc._prefix_ok is True


def test_batch_size_auto_and_the_size_that_fit_is_kept(scorer):
    """``batch_size: auto`` is 32 rows on a CPU; a batch that runs out of memory is halved, and later calls start
    from the size that fit instead of running out of memory again."""
    cls = type(scorer)
    sc = cls(scorer.model, scorer.processor, config=ScoringConfig())
    assert sc.config.batch_size == "auto" and sc.batch_rows() == 32
    seen = []

    def fn(chunk):
        seen.append(len(chunk))
        if len(chunk) > 5:
            raise torch.OutOfMemoryError("simulated")
        return torch.zeros(len(chunk))

    assert sc._chunks(list(range(40)), fn).shape == (40,)
    assert seen[:3] == [32, 16, 8] and max(seen[3:]) == 4 and sc.batch_rows() == 4
    seen.clear()
    sc._chunks(list(range(10)), fn)
    assert seen == [4, 4, 2]
    # the size that fit is kept in tokens: prompts half as long get twice the rows, twice as long half
    assert sc.batch_rows(256) == 8 and sc.batch_rows(1024) == 2
    assert ScoringConfig(batch_size="12").batch_size == 12  # as the command line gives it
