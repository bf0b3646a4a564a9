"""MM-SHAP beside the papers': mbias's default game, mbias's reference definition, and an independent
re-implementation of the reference procedure with the ``shap`` package, on the zoo's ladder.

For each ladder build (zoo:shapes-p00, zoo:shapes-p90-seed7, zoo:shapes-p90, zoo:shapes-p90-seed1, zoo:shapes-p99:
the verdict ladder of docs/methods.md, from no cue-following to almost always) and the same ``--n`` examples of
synth:shapes-p90/test-balanced, the T-SHAP of every example under

- **mbias default**: ``mm_shap`` as an audit runs it (question tokens, mean-colour baseline at the feature level,
  log p(gold) over the choices, 20 antithetic permutations or exact enumeration);
- **mbias, pixel + black**: the same game with the reference's image masking (pixels painted black), which
  isolates how much of the gap the baseline and masking level make;
- **reference (mbias)**: ``mm_shap`` with ``definition: reference`` (probes/mm_shap.py);
- **reference (mbias, another seed)**: the same with another run seed, the Monte-Carlo noise to judge the next
  column by;
- **reference (shap)**: the reference procedure written again with plain transformers and the ``shap`` package's
  Permutation explainer, sharing no mbias code: ``reference_reimplementation`` below (CC-SHAP-VLM's
  ``explain_VLM`` with max_new_tokens=1, greedy in place of its sampled output token).

Also per example: whether the model's own output token (the reference's value) is the gold answer's first token,
and the largest difference between the two implementations' value functions on 8 random coalitions (the games
must be the same game for the T-SHAP differences to be sampling noise).

    python benchmarks/mm_shap_reference.py [--n 20]

Writes benchmarks/results/mm_shap_reference.{json,md}. About 10 minutes on one core.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).parent / "results"
LADDER = ("shapes-p00", "shapes-p90-seed7", "shapes-p90", "shapes-p90-seed1", "shapes-p99")
COLUMNS = ("mbias_default", "mbias_pixel_black", "reference_mbias", "reference_mbias_seed2", "reference_shap")
LABELS = {"mbias_default": "mbias default", "mbias_pixel_black": "mbias, pixel + black",
          "reference_mbias": "reference (mbias)", "reference_mbias_seed2": "reference (mbias, seed 2)",
          "reference_shap": "reference (shap)"}


def import_shap():
    """``import shap`` from a script in this folder: numba (under shap) imports ``coverage`` when it can, and this
    folder's coverage.py would stand in for the package, so the folder leaves sys.path while shap loads."""
    here = Path(__file__).resolve().parent
    shadow = sys.modules.get("coverage")
    if shadow is not None and Path(getattr(shadow, "__file__", "") or "/").resolve().parent == here:
        del sys.modules["coverage"]
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    try:
        return importlib.import_module("shap")
    finally:
        sys.path[:] = saved


class ReferenceReimplementation:
    """CC-SHAP-VLM's ``explain_VLM`` game for one image and question, with plain transformers (no mbias code).

    Features, in the reference's order: the p*p image cells, then every token of the prompt with the image as one
    "<image>" token. The masker never masks special tokens, the image token and a whitespace-only token beside
    it; masked tokens become "_"; masked cells are painted black in the raw image's pixels (cell r spans rows
    round(r*h/p) to round((r+1)*h/p)); the value is the raw logit of the model's own output token (greedy on the
    full input) at the last prompt position, as ``generate(output_logits=True)`` reports it for the first step.
    ``grid`` overrides p (the reference always takes the rule).
    """

    def __init__(self, model, processor, image, question: str, *, grid: int | None = None, batch_size: int = 64):
        self.model, self.processor, self.batch_size = model, processor, batch_size
        tok = processor.tokenizer
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        self.prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[self.prompt], images=[image], return_tensors="pt")
        self.expanded = inputs["input_ids"][0]
        self.pixel_values = inputs["pixel_values"]
        image_id = int(model.config.image_token_id)
        # collapse the processor's run of image tokens back to the single "<image>" the reference's prompt has
        self.collapsed_pos = [i for i, t in enumerate(self.expanded.tolist())
                              if t != image_id or i == 0 or int(self.expanded[i - 1]) != image_id]
        collapsed = [int(self.expanded[i]) for i in self.collapsed_pos]
        unexpanded = tok(self.prompt, add_special_tokens=False).input_ids
        assert collapsed == unexpanded, "the processor's prompt differs from the tokenizer's beyond the image"
        never = set(tok.all_special_ids) | {image_id}
        fixed = [t in never for t in collapsed]
        for k, t in enumerate(collapsed):
            if t == image_id:
                for j in (k - 1, k + 1):
                    if 0 <= j < len(collapsed) and not tok.decode([collapsed[j]]).strip():
                        fixed[j] = True
        self.fixed = np.array(fixed)
        self.p = grid or int(math.ceil(math.sqrt(len(collapsed))))
        self.n_image = self.p ** 2
        self.X = np.array([[-(k + 1) for k in range(self.n_image)] + collapsed], dtype=np.int64)
        self.underscore = tok("_", add_special_tokens=False).input_ids[0]
        self.raw = np.asarray(image.convert("RGB"))
        h, w = self.raw.shape[:2]
        self.ys = np.round(np.linspace(0, h, self.p + 1)).astype(int)
        self.xs = np.round(np.linspace(0, w, self.p + 1)).astype(int)
        with torch.no_grad():
            full = model(input_ids=self.expanded[None], attention_mask=torch.ones(1, len(self.expanded)),
                         pixel_values=self.pixel_values).logits[0, -1]
        self.token = int(full.argmax())

    def masker(self, mask, x):
        """shap masker: ``mask`` True = kept; returns the masked row (one sample)."""
        keep = np.array(mask, dtype=bool).copy()
        keep[self.n_image:] |= self.fixed
        out = np.array(x, dtype=np.int64).reshape(1, -1).copy()
        image_part, text_part = out[:, :self.n_image], out[:, self.n_image:]
        image_part[:, ~keep[:self.n_image]] = 0
        text_part[:, ~keep[self.n_image:]] = self.underscore
        return out

    def predict(self, rows) -> np.ndarray:
        """[K] raw logits of the output token for masked rows [K, n]."""
        from PIL import Image

        rows = np.asarray(rows, dtype=np.int64).reshape(-1, self.X.shape[1])
        out = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            images, ids = [], []
            for row in chunk:
                pixels = self.raw.copy()
                for k in np.nonzero(row[:self.n_image] == 0)[0]:
                    r, c = divmod(int(k), self.p)
                    pixels[self.ys[r]:self.ys[r + 1], self.xs[c]:self.xs[c + 1]] = 0
                images.append(Image.fromarray(pixels))
                e = self.expanded.clone()
                e[self.collapsed_pos] = torch.from_numpy(row[self.n_image:])
                e[self.expanded == int(self.model.config.image_token_id)] = int(self.model.config.image_token_id)
                ids.append(e)
            pix = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
            ids = torch.stack(ids)
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pix).logits
            out.append(logits[:, -1, self.token].float().numpy())
        return np.concatenate(out)

    def explain(self, seed: int, max_evals: int = 600) -> dict:
        """T-SHAP with shap's Permutation explainer at the reference's budget (600, raised by 100 up to 900)."""
        shap = import_shap()

        for budget in (max_evals, max_evals + 100, max_evals + 200, max_evals + 300):
            try:
                explainer = shap.explainers.Permutation(self.predict, self.masker, seed=seed)
                values = explainer(self.X, max_evals=budget, silent=True).values[0]
                break
            except ValueError:
                continue
        else:
            raise ValueError("max_evals 900 is too low for this many players (the reference fails here too)")
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        image = np.abs(values[:self.n_image]).sum()
        text = np.abs(values[self.n_image:]).sum()
        return {"t_shap": float(text / (text + image)), "phi": values, "max_evals": budget}

    def rows_for(self, text_positions: list[int], masks: np.ndarray) -> np.ndarray:
        """The masked rows that mbias's reference players ``masks`` [K, T + p*p] (T prompt tokens at expanded
        ``text_positions``, then the cells) stand for."""
        index = {pos: k for k, pos in enumerate(self.collapsed_pos)}
        out = []
        for m in masks:
            keep = np.ones(self.X.shape[1], dtype=bool)
            keep[:self.n_image] = m[len(text_positions):]
            for j, pos in enumerate(text_positions):
                keep[self.n_image + index[pos]] = m[j]
            out.append(self.masker(keep, self.X[0])[0])
        return np.array(out)


def spearman(a, b) -> float | None:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = ~(np.isnan(a) | np.isnan(b))
    if ok.sum() < 3:
        return None
    ra = np.argsort(np.argsort(a[ok]))
    rb = np.argsort(np.argsort(b[ok]))
    return float(np.corrcoef(ra, rb)[0, 1])


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="examples per build")
    ap.add_argument("--data", default="shapes-p90/test-balanced")
    ap.add_argument("--skip-pixel-black", action="store_true",
                    help="leave out the 'mbias, pixel + black' column (the costliest; a loaded machine)")
    args = ap.parse_args()
    columns = [c for c in COLUMNS if not (args.skip_pixel_black and c == "mbias_pixel_black")]
    started = time.perf_counter()

    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mbias.models import ScoringConfig, load_model
    from mbias.probes import PROBES, SampleContext, sample_seed
    from mbias.probes.mm_shap import MMShapConfig, ReferenceGame
    from mbias.synth import load_synth
    from mbias.zoo import zoo_model_path

    torch.set_num_threads(1)
    ds = load_synth(args.data)
    examples = [ds[i] for i in range(args.n)]
    probes = {"mbias_default": PROBES.get("mm_shap")(MMShapConfig()),
              "reference": PROBES.get("mm_shap")(MMShapConfig(definition="reference"))}
    builds = []
    for name in LADDER:
        path = zoo_model_path(name)
        scorer = load_model(f"zoo:{name}", device="cpu")
        pixel = load_model(f"zoo:{name}", device="cpu", config=ScoringConfig(masking="pixel", image_baseline="black"))
        model = LlavaForConditionalGeneration.from_pretrained(path).eval()
        processor = AutoProcessor.from_pretrained(path)
        rows, t0 = [], time.perf_counter()
        for k, ex in enumerate(examples):
            swap = examples[(k + 1) % len(examples)].image
            row = {"id": ex.id, "question": ex.question, "answer": ex.answer}
            rec = probes["mbias_default"].run(SampleContext(scorer, scorer.prepare(ex), run_seed=0, swap_image=swap))
            row["mbias_default"], row["mbias_default_undefined"] = rec["t_shap"], rec["t_shap_undefined"]
            if "mbias_pixel_black" in columns:
                rec = probes["mbias_default"].run(SampleContext(pixel, pixel.prepare(ex), run_seed=0,
                                                                swap_image=swap))
                row["mbias_pixel_black"] = rec["t_shap"]
            prepared = scorer.prepare(ex)
            ref = probes["reference"].run(SampleContext(scorer, prepared, run_seed=0))
            row["reference_mbias"] = ref["t_shap"]
            row["reference_mbias_seed2"] = probes["reference"].run(SampleContext(scorer, prepared, run_seed=2))["t_shap"]
            row.update(output_token=ref["output_token"], output_token_is_answer=ref["output_token_is_answer"],
                       players=ref["n_text"] + ref["n_image"], grid=ref["grid"],
                       permutations=ref["reference_permutations"])
            theirs = ReferenceReimplementation(model, processor, ex.image, ex.question)
            shap_res = theirs.explain(seed=sample_seed(0, ex.id, "shap") % 2**31)
            row["reference_shap"] = shap_res["t_shap"]
            # the same game? both value functions on 8 random coalitions of mbias's players
            game = ReferenceGame(scorer, prepared)
            masks = np.random.default_rng(k).random((8, game.n_players)) < 0.5
            ours = game.value(torch.from_numpy(masks)).numpy()
            other = theirs.predict(theirs.rows_for(game.text_positions.tolist(), masks))
            row["value_max_abs_diff"] = float(np.abs(ours - other).max())
            question = set(prepared.question_positions.tolist())
            phi = np.abs(np.array(ref["phi"]))
            template = [j for j, pos in enumerate(game.text_positions.tolist()) if pos not in question]
            row["reference_template_share"] = float(phi[template].sum() / phi.sum()) if phi.sum() > 0 else None
            row["same_token"] = game.token == theirs.token
            rows.append(row)
            print(json.dumps({"build": name, **{c: row[c] for c in ("id", *columns)}}), flush=True)
        seconds = time.perf_counter() - t0
        summary = {c: _mean(r[c] for r in rows) for c in columns}
        ref = np.array([r["reference_mbias"] for r in rows])
        summary.update(
            n=len(rows), seconds=round(seconds, 1),
            n_mbias_default_undefined=sum(r["mbias_default"] is None for r in rows),
            n_output_token_not_answer=sum(not r["output_token_is_answer"] for r in rows),
            spearman_default_vs_reference=spearman([np.nan if r["mbias_default"] is None else r["mbias_default"]
                                                    for r in rows], ref),
            gap_reference_minus_default=_mean(r["reference_mbias"] - r["mbias_default"] for r in rows
                                              if r["mbias_default"] is not None),
            gap_pixel_black_minus_default=_mean(r["mbias_pixel_black"] - r["mbias_default"] for r in rows
                                                if r["mbias_default"] is not None and r.get("mbias_pixel_black")
                                                is not None),
            mean_abs_reference_vs_shap=float(np.mean([abs(r["reference_mbias"] - r["reference_shap"]) for r in rows])),
            mean_abs_reference_seed_to_seed=float(np.mean([abs(r["reference_mbias"] - r["reference_mbias_seed2"])
                                                           for r in rows])),
            pearson_reference_vs_shap=float(np.corrcoef(ref, [r["reference_shap"] for r in rows])[0, 1]),
            max_value_abs_diff=float(max(r["value_max_abs_diff"] for r in rows)),
            same_output_token=sum(r["same_token"] for r in rows),
            reference_template_share=_mean(r["reference_template_share"] for r in rows),
        )
        builds.append({"build": f"zoo:{name}", "summary": summary, "examples": rows})
        write(builds, args, started, columns)  # after every build, so a stopped run leaves what it measured


def write(builds: list[dict], args, started: float, columns: list[str]) -> None:
    from mbias.provenance import results_header

    every = [r for b in builds for r in b["examples"]]
    overall = {c: _mean(r[c] for r in every) for c in columns}
    overall.update(
        n=len(every), n_mbias_default_undefined=sum(r["mbias_default"] is None for r in every),
        n_output_token_not_answer=sum(not r["output_token_is_answer"] for r in every),
        spearman_default_vs_reference=spearman([np.nan if r["mbias_default"] is None else r["mbias_default"]
                                                for r in every], [r["reference_mbias"] for r in every]),
        gap_reference_minus_default=_mean(r["reference_mbias"] - r["mbias_default"] for r in every
                                          if r["mbias_default"] is not None),
        gap_pixel_black_minus_default=_mean(r["mbias_pixel_black"] - r["mbias_default"] for r in every
                                            if r["mbias_default"] is not None and r.get("mbias_pixel_black")
                                            is not None),
        mean_abs_reference_vs_shap=float(np.mean([abs(r["reference_mbias"] - r["reference_shap"]) for r in every])),
        mean_abs_reference_seed_to_seed=float(np.mean([abs(r["reference_mbias"] - r["reference_mbias_seed2"])
                                                       for r in every])),
        max_value_abs_diff=float(max(r["value_max_abs_diff"] for r in every)),
        reference_template_share=_mean(r["reference_template_share"] for r in every),
    )
    # does each definition order the ladder's builds the same way?
    for c in columns:
        overall[f"build_order_{c}"] = [b["build"] for b in sorted(builds, key=lambda b: b["summary"][c])]

    header, provenance = results_header(wall_seconds=time.perf_counter() - started)
    OUT.mkdir(exist_ok=True)
    meta = {"data": f"synth:{args.data}", "examples_per_build": args.n, "ladder": [f"zoo:{n}" for n in LADDER],
            "threads": 1, "device": "cpu", "columns": columns}
    (OUT / "mm_shap_reference.json").write_text(json.dumps(
        {"meta": meta, "provenance": provenance, "overall": overall, "builds": builds}, indent=2) + "\n")

    def f(x, digits=3):
        return "undef." if x is None else f"{x:.{digits}f}"

    lines = ["# MM-SHAP: mbias's default game, the reference definition, and the shap re-implementation", "",
             *header, "",
             f"Same {args.n} examples of synth:{args.data} on every build of the zoo's ladder, one thread. T-SHAP = "
             "the text players' share of the total absolute attribution. Columns: mbias default (an audit's "
             "`mm_shap`); " + ("the same game with pixels painted black (the reference's masking and baseline); "
                                if "mbias_pixel_black" in columns else "") +
             "`definition: reference` with run seeds 0 and 2; the reference procedure re-implemented with "
             "transformers and `shap.explainers.Permutation` (no mbias code). \"undef.\": the baseline equals the "
             "image (a one-colour scene under the mean-colour baseline), left out of the mean.", "",
             "## Means per build", "",
             "| build | " + " | ".join(LABELS[c] for c in columns) + " | reference - default | Spearman default "
             "vs reference | mean abs. reference (mbias) - (shap) | mean abs. seed 0 - seed 2 | output token is "
             "not the answer | undefined by default | largest value difference | template tokens' share (ref.) |",
             "|---|" + "---|" * (len(columns) + 8)]
    for b in builds + [{"build": "all builds", "summary": overall}]:
        s = b["summary"]
        lines.append(f"| {b['build']} | " + " | ".join(f(s[c]) for c in columns)
                     + f" | {f(s['gap_reference_minus_default'], 3)} | {f(s['spearman_default_vs_reference'], 2)}"
                     f" | {s['mean_abs_reference_vs_shap']:.3f} | {s['mean_abs_reference_seed_to_seed']:.3f}"
                     f" | {s['n_output_token_not_answer']} of {s['n']} | {s['n_mbias_default_undefined']}"
                     f" | {s['max_value_abs_diff']:.1e} | {f(s['reference_template_share'], 2)} |")
    lines += ["", "Builds ordered by mean T-SHAP: " + "; ".join(
        f"{LABELS[c]}: " + " < ".join(x.removeprefix("zoo:") for x in overall[f"build_order_{c}"]) for c in columns),
        "", "## Per example", ""]
    for b in builds:
        lines += [f"### {b['build']}", "",
                  "| example | question | answer | output token | " + " | ".join(LABELS[c] for c in columns)
                  + " | players (ref.) | permutations (ref.) |", "|---|---|---|---|" + "---|" * (len(columns) + 2)]
        for r in b["examples"]:
            lines.append(f"| {r['id']} | {r['question']} | {r['answer']} | `{r['output_token'].strip()}` | "
                         + " | ".join(f(r[c]) for c in columns) + f" | {r['players']} | {r['permutations']} |")
        lines.append("")
    (OUT / "mm_shap_reference.md").write_text("\n".join(lines))
    print("\n".join(lines[len(header) + 4: len(header) + 14 + len(builds)]))


if __name__ == "__main__":
    main()
