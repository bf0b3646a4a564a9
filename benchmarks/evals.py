"""What the benchmark suites measure on a trained (or untrained) model: per-example results the harness
summarises (benchmarks/harness.py). Every function takes a loaded scorer (``mbias.models.load_model``) and the
run's ``args`` (how many examples each evaluation reads) and returns ``{name: {"correct": [...], "category": [...],
...}}`` or, for the audit's probes, ``{"audit": {field: [...]}}``; NaN where a probe had no value.
"""

from __future__ import annotations

import numpy as np

# Held-out selection data: the cue predicts nothing (balanced) / the training distribution. No test split is read
# when settings are chosen.
VAL = {"val-balanced": "synth:shapes-p00/val", "val": "synth:shapes-p90/val"}
SPLITS = ("test-cp", "test-balanced", "test-id")


def predictions(scorer, examples, swap: bool = False) -> dict:
    """Per example: right or not, its question type, whether the model answered with the cue, whether the cue was
    right. ``swap``: every patch replaced by the next example's image (a model that looks follows that image)."""
    import torch

    out = {"correct": [], "category": [], "cue": [], "cue_right": []}
    for i, ex in enumerate(examples):
        p = scorer.prepare(ex)
        if swap:
            other = examples[(i + 1) % len(examples)].image
            pred = scorer.predict(p, torch.zeros(1, scorer.patch_groups(p).n, dtype=torch.bool), baseline="swap",
                                  swap_image=other)
        else:
            pred = scorer.predict(p)
        out["correct"].append(float(pred.correct))
        out["category"].append(ex.category)
        out["cue"].append(float(pred.text == ex.meta["cue_answer"]))
        out["cue_right"].append(bool(ex.meta["follows_prior"]))
    return out


def _split(name: str, n: int) -> list:
    from mbias.synth import load_synth

    ds = load_synth(f"shapes-p90/{name}")
    return [ds[i] for i in range(min(n, len(ds)))]


def _audit(scorer, examples, *, vision: bool = False) -> dict:
    """The audit's language share (or vision share = 1 - it) and follows-the-wording rate per example."""
    from mbias.probes import PROBES, SampleContext

    shapley, conflict = PROBES.get("modality_shapley")(), PROBES.get("conflict")()
    share, follows = [], []
    for ex in examples:
        ctx = SampleContext(scorer, scorer.prepare(ex))
        s = shapley.run(ctx)["language_share"]
        share.append(np.nan if s is None else (1.0 - s if vision else s))
        f = conflict.run(ctx)["follows_text"]
        follows.append(np.nan if f is None else f)
    return {"audit": {"vision_share" if vision else "language_share": share, "follows_text": follows}}


def image_only(scorer, examples) -> dict:
    """Accuracy with the question masked (the choices still name the question type): what the image side knows."""
    from mbias.probes import SampleContext
    from mbias.variants import MASK

    out = {"correct": [], "category": []}
    for ex in examples:
        out["correct"].append(float(SampleContext(scorer, scorer.prepare(ex)).outcome(text=MASK).correct))
        out["category"].append(ex.category)
    return out


def shift(scorer, args) -> dict:
    """The distribution-shift evaluation of a fine-tuned biased model: accuracy per split, test-cp with swapped
    images, and the audit's language share and follows-wording on test-balanced."""
    out = {split: predictions(scorer, _split(split, args.n_eval)) for split in SPLITS}
    out["swap"] = predictions(scorer, _split("test-cp", args.n_eval), swap=True)
    out.update(_audit(scorer, _split("test-balanced", args.n_audit)))
    return out


def learning_speed(scorer, args) -> dict:
    """The learning-speed evaluation of a model trained from scratch: accuracy per split, image-only accuracy,
    a linear probe of the vision side, the audit's vision share and follows-wording."""
    out = {split: predictions(scorer, _split(split, args.n_eval)) for split in SPLITS}
    out["image-only"] = image_only(scorer, _split("test-balanced", args.n_eval))
    out.update(_audit(scorer, _split("test-balanced", args.n_audit), vision=True))
    out["probe"] = vision_probe(scorer, args.n_probe, args.n_eval)
    return out


def val(scorer, args) -> dict:
    """Accuracy on the held-out selection data (VAL)."""
    from mbias.data import load_data

    return {name: predictions(scorer, load_data(ref, max_samples=args.n_val).examples) for name, ref in VAL.items()}


def vision_probe(scorer, n_train: int, n_test: int) -> dict:
    """Per test-balanced example: is a linear read-out of the projector's features right? One logistic regression
    per question type (the answer is a property of the picture given the type), fitted on unbiased train images."""
    import torch

    from mbias.synth import load_synth

    def features(ds, n):
        rows, cats, answers = [], [], []
        for start in range(0, n, 256):
            exs = [ds[i] for i in range(start, min(n, start + 256))]
            with torch.no_grad():
                rows.append(scorer.image_features_for([e.image for e in exs]).flatten(1).float())
            cats += [e.category for e in exs]
            answers += [e.choices.index(e.answer) for e in exs]
        return torch.cat(rows), np.asarray(cats), torch.tensor(answers)

    xtr, ctr, ytr = features(load_synth("shapes-p00/train"), n_train)
    xte, cte, yte = features(load_synth("shapes-p90/test-balanced"), n_test)
    correct = np.zeros(len(cte))
    torch.manual_seed(0)
    for cat in sorted(set(ctr)):
        tr, te = ctr == cat, cte == cat
        mu, sd = xtr[tr].mean(0), xtr[tr].std(0) + 1e-6
        a, b = (xtr[tr] - mu) / sd, (xte[te] - mu) / sd
        head = torch.nn.Linear(a.shape[1], int(ytr[tr].max()) + 1)
        opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-3)
        for _ in range(300):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(a), ytr[tr]).backward()
            opt.step()
        with torch.no_grad():
            correct[te] = (head(b).argmax(1) == yte[te]).numpy()
    return {"correct": correct.tolist(), "category": cte.tolist()}


def values(result: dict, metric: str) -> np.ndarray:
    """Per-example values of a metric: SPLIT, SPLIT/CATEGORY, SPLIT/cue-right|cue-wrong, or audit/FIELD (NaN where
    the example does not belong to the subset)."""
    if metric.startswith("audit/"):
        return np.asarray(result["audit"][metric[6:]], dtype=float)
    split, _, sub = metric.partition("/")
    r = result[split]
    correct = np.asarray(r["correct"], dtype=float)
    if not sub:
        return correct
    if sub in ("cue-right", "cue-wrong"):
        keep = np.asarray(r["cue_right"]) == (sub == "cue-right")
    else:
        keep = np.asarray(r["category"]) == sub
    return np.where(keep, correct, np.nan)
