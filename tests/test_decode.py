"""Decode-time fixes (mbias/decoding.py): the logits processors against the formula computed by hand from separate
forward passes, greedy determinism, alpha = 0 as plain decoding, and ``mbias audit --decode`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mbias.cli import main
from mbias.decoded_scoring import choice_scores, with_decode
from mbias.decoding import (
    ContrastBranchLogitsProcessor,
    decoding_processors,
    fuse_logits,
    fused_logprobs,
    parse_decode,
)
from mbias.errors import ConfigError
from mbias.example import Example

SPECS = ["contrastive:alpha=1.5", "vcd:alpha=1,beta=0.9,noise_step=500"]  # beta 0.9 cuts on a near-uniform model


@pytest.fixture(scope="module")
def llava_dir(tiny_model_dir):
    return tiny_model_dir("llava")


@pytest.fixture(scope="module")
def hf(llava_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(llava_dir).eval(), AutoProcessor.from_pretrained(llava_dir)


@pytest.fixture(scope="module")
def scorer(llava_dir):
    from mbias.models import load_model

    return load_model(llava_dir, device="cpu")


def _inputs(processor, image, with_image=True):
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": "What colour is the circle?"}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return processor(text=[prompt], images=[image] if with_image else None, return_tensors="pt")


def _extend(inputs: dict, tokens: torch.Tensor) -> dict:
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], tokens.view(1, -1)], dim=1)
    out["attention_mask"] = torch.ones_like(out["input_ids"])
    return out


def test_specs_parse_to_one_spelling_and_bad_ones_are_one_line():
    assert str(parse_decode("contrastive")) == "contrastive:alpha=1,beta=0"
    assert parse_decode("contrastive:alpha=2") == parse_decode(" contrastive: alpha=2.0 , beta=0 ")
    assert str(parse_decode("vcd:beta=0.2")) == "vcd:alpha=1,beta=0.2,noise_step=500"
    assert parse_decode("none") is None and parse_decode(None) is None
    for bad, words in [("foo", "unknown decode-time fix 'foo'"), ("contrastive:alpha=x", "alpha must be a number"),
                       ("contrast:alpha=1", "did you mean 'contrastive'"), ("vcd:gamma=1", "no setting 'gamma'"),
                       ("vcd:noise_step=2.5", "noise_step must be an integer"), ("vcd:beta=1", "beta"),
                       ("contrastive:alpha", "k=v pairs"), ("contrastive:alpha=-1", "alpha must be")]:
        with pytest.raises(ConfigError, match=words) as info:
            parse_decode(bad)
        assert "\n" not in str(info.value)


def test_cli_refuses_a_bad_spec_in_one_line_before_loading(tmp_path, capsys):
    for bad in ("foo", "contrastive:alpha=x"):
        code = main(["audit", "--model", str(tmp_path / "absent"), "--data", "synth:shapes-p90/test-cp",
                     "--out", str(tmp_path / "out"), "--decode", bad])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith("mbias: error: --decode") and "e.g. contrastive:alpha=1" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec", SPECS)
def test_processor_scores_equal_the_formula_from_two_separate_passes(hf, shapes_image, spec):
    model, processor = hf
    inputs = _inputs(processor, shapes_image)
    procs = decoding_processors(model, processor, inputs, spec, seed=7)
    out = model.generate(**inputs, logits_processor=procs, do_sample=False, max_new_tokens=4, output_scores=True,
                         return_dict_in_generate=True, pad_token_id=0)
    start = inputs["input_ids"].shape[1]
    generated = out.sequences[0, start:]
    # the contrast branch's input, built independently of the processor
    if spec.startswith("contrastive"):
        ids = inputs["input_ids"][0]
        contrast = {"input_ids": ids[ids != model.config.image_token_id].view(1, -1)}  # the prompt, image tokens out
    else:
        from mbias.decoding import diffusion_noise

        contrast = dict(inputs)
        contrast["pixel_values"] = diffusion_noise(inputs["pixel_values"], 500, seed=7)
        assert not torch.equal(contrast["pixel_values"], inputs["pixel_values"])
    decode, cut = parse_decode(spec), 0
    with torch.no_grad():
        for t, scores in enumerate(out.scores):
            prefix = generated[:t]
            main_logits = model(**_extend(inputs, prefix)).logits[:, -1]
            contrast_logits = model(**_extend(contrast, prefix)).logits[:, -1]
            expected = main_logits + decode.alpha * (main_logits - contrast_logits)
            if decode.beta:
                probs = main_logits.softmax(-1)
                removed = probs < decode.beta * probs.max(-1, keepdim=True).values
                expected = expected.masked_fill(removed, float("-inf"))
                cut += int(removed.sum())
            assert torch.equal(torch.isinf(scores), torch.isinf(expected))
            keep = torch.isfinite(expected)
            torch.testing.assert_close(scores[keep], expected[keep], rtol=1e-5, atol=1e-5)
            assert (expected[keep] - main_logits[keep]).abs().max() > 1e-3  # the fix changes the logits
    assert cut > 0 or not decode.beta  # the plausibility cut was exercised


def test_greedy_generation_is_deterministic_and_alpha_zero_is_plain_greedy(hf, shapes_image):
    model, processor = hf
    inputs = _inputs(processor, shapes_image)
    kw = dict(do_sample=False, max_new_tokens=6, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    plain = model.generate(**inputs, **kw)
    for spec in SPECS:
        runs = [model.generate(**inputs, logits_processor=decoding_processors(model, processor, inputs, spec), **kw)
                for _ in range(2)]
        assert torch.equal(runs[0].sequences, runs[1].sequences)
        assert all(torch.equal(a, b) for a, b in zip(runs[0].scores, runs[1].scores, strict=True))
        zero = spec.replace("alpha=1.5", "alpha=0").replace("alpha=1,", "alpha=0,").replace("beta=0.9", "beta=0")
        assert parse_decode(zero).alpha == 0
        procs = decoding_processors(model, processor, inputs, zero)
        same = model.generate(**inputs, logits_processor=procs, **kw)
        assert isinstance(procs[0], ContrastBranchLogitsProcessor) and procs[0]._cache is not None  # it ran
        assert torch.equal(same.sequences, plain.sequences)
        assert all(torch.equal(a, b) for a, b in zip(same.scores, plain.scores, strict=True))


def test_the_audit_scorer_scores_and_generates_through_the_formula(scorer, shapes_image):
    ex = Example("e1", shapes_image, "What colour is the circle?", "red", choices=["red", "green", "blue"])
    prepared = scorer.prepare(ex)
    free = scorer.prepare(ex, with_image=False)
    ids, feats = scorer.variant_inputs(prepared, None, None)
    first = [c[:1] for c in prepared.choice_ids]
    tokens = torch.cat(first)
    # the question's first two tokens masked, in both prompts (the probes' masked variants keep their mask)
    text_keep = torch.ones(1, prepared.n_question, dtype=torch.bool)
    text_keep[0, :2] = False
    mids, mfeats = scorer.variant_inputs(prepared, None, text_keep)
    fids, _ = scorer.variant_inputs(free, None, text_keep)
    for spec in ("contrastive:alpha=1.5", "vcd:alpha=2,beta=0"):
        served = with_decode(scorer, spec)
        decode = served.decode
        for v_ids, v_feats, c_ids in ((ids, feats, free.prompt_ids.unsqueeze(0)), (mids, mfeats, fids)):
            # by hand: two separate passes (plain scorer), then the formula
            main_lp = scorer.continuation_logprobs(prepared, v_ids, v_feats, tokens[:1])[0, 0]
            if spec.startswith("contrastive"):
                other_lp = scorer.continuation_logprobs(free, c_ids, None, tokens[:1])[0, 0]
            else:
                noised = served._noised_features(prepared).unsqueeze(0)
                other_lp = scorer.continuation_logprobs(prepared, v_ids, noised, tokens[:1])[0, 0]
            # the formula on log-softmaxed logits differs from the raw one by a constant per row: same log_softmax
            expected = fused_logprobs(main_lp, other_lp, decode)[tokens]
            got = served.score_inputs(prepared, v_ids, v_feats, answers=prepared.choice_ids)[0]
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            assert (got - main_lp[tokens]).abs().max() > 1e-3
        torch.testing.assert_close(choice_scores(scorer, prepared, spec),
                                   served.score_inputs(prepared, ids, feats, answers=prepared.choice_ids)[0])
        # generation: both branches batched in one generate call, against a greedy loop of separate passes
        contrast = served.contrast_inputs(prepared, ids, feats)
        steps = []
        for _ in range(5):
            cont = torch.tensor(steps + [0])
            m, _ = scorer._forward_rows(prepared, ids, feats, [cont], [(0, 0)])
            c, _ = scorer._forward_rows(contrast[0], contrast[1], contrast[2], [cont], [(0, 0)])
            steps.append(int(fuse_logits(m[0, len(steps)], c[0, len(steps)], decode).argmax()))
        expected_text = scorer.tokenizer.decode(steps, skip_special_tokens=True).strip()
        assert served.generate_inputs(prepared, ids, feats, max_new_tokens=5) == expected_text
        plain_zero = with_decode(scorer, spec.replace("alpha=1.5", "alpha=0").replace("alpha=2", "alpha=0"))
        assert plain_zero.generate_inputs(prepared, ids, feats, max_new_tokens=5) == \
            scorer.generate_inputs(prepared, ids, feats, max_new_tokens=5)
    assert with_decode(with_decode(scorer, "vcd"), None).__class__ is type(scorer)


def test_audit_decode_flag_end_to_end(llava_dir, scorer, tmp_path, capsys):
    import jsonschema

    from mbias.data import load_data

    out = tmp_path / "audit"
    data = "synth:shapes-p90/test-cp"
    code = main(["audit", "--model", llava_dir, "--data", data, "--out", str(out), "--no-progress", "--no-report",
                 "--max-samples", "2", "--probes", "ablation", "--decode", "contrastive:alpha=1.5"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    schema = json.loads((Path(__file__).parents[1] / "reports" / "summary.schema.json").read_text())
    jsonschema.validate(summary, schema)
    assert summary["decode"] == {"spec": "contrastive:alpha=1.5,beta=0", "method": "contrastive", "alpha": 1.5,
                                 "beta": 0.0}
    from mbias.reports.markdown import render_markdown

    assert "decoded with contrastive:alpha=1.5,beta=0" in render_markdown(summary, {})  # the report says so
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["decode"] == "contrastive:alpha=1.5,beta=0"
    examples = load_data(data, max_samples=2).examples
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for rec, ex in zip(records, examples, strict=True):
        gold = ex.choices.index(ex.answer)
        served = choice_scores(scorer, ex, "contrastive:alpha=1.5")
        plain = choice_scores(scorer, ex, None)
        ab = rec["probes"]["ablation"]
        assert ab["logprob_full"] == pytest.approx(float(served[gold]), abs=1e-4)
        assert ab["logprob_full"] != pytest.approx(float(plain[gold]), abs=1e-4)
        assert rec["prediction"] == ex.choices[int(served.argmax())]
    # the same folder with another decode is another audit: refused, not resumed
    code = main(["audit", "--model", llava_dir, "--data", data, "--out", str(out), "--no-progress", "--no-report",
                 "--max-samples", "2", "--probes", "ablation", "--decode", "vcd"])
    assert code == 2 and "different model, data or config" in capsys.readouterr().err
