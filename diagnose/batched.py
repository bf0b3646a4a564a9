"""The audit's per-sample records with the forward passes batched across samples (``BatchedAudit``): what the
in-training monitor (``finetune.monitor.BiasMonitorCallback``) measures with, every N steps, on the model being
trained. It lives beside the audit because it rebuilds the audit's own records."""

from __future__ import annotations

import dataclasses
import logging

import torch

from mbias.diagnose.config import AuditConfig
from mbias.variants import KEEP, REMOVED

logger = logging.getLogger(__name__)


class BatchedAudit:
    """The audit's per-sample records (``diagnose.runner.audit_records``'s), with the forward passes batched
    across samples.

    The audit scores one sample at a time (a few variants per call); on a small model that is mostly per-call
    overhead, paid again at every measurement. Here the text encodings (model-independent) are made once, the image
    features of every sample and its baseline are computed in one batched pass per measurement, and every
    (sample, variant) the cheap probes ask for (``PREFETCH``) is scored in right-padded batches of
    ``scoring.batch_size`` rows, reading each row's scores where its own answer starts. The outcomes are put in
    each sample's ``SampleContext`` before the probes run, so the probes' own code makes the records; anything a
    probe asks for beyond them (another probe, an example without choices: generation) is computed as the audit
    computes it. Equal to the audit's records up to float rounding of a different batch shape (tested)."""

    def __init__(self, scorer, examples, probes, config: AuditConfig):
        self.scorer, self.examples, self.probes, self.config = scorer, examples, probes, config
        self.variants = _prefetch_variants(probes, scorer)
        self.encoded: dict[int, tuple] = {}  # index -> (Encoded, text-only Prepared or None), or None: unreadable

    def _encoding(self, i: int):
        """What does not change with the weights, made once per sample: the example (a synthetic split draws its
        image on every read), its encodings with and without the image, the swap baseline's partner image, and
        its normalised choices. None: the sample cannot be read (skipped with a warning, as the audit's
        ``on_error="skip"``)."""
        from mbias.diagnose.runner import _swap_partner
        from mbias.errors import DataError
        from mbias.example import normalize_answer

        if i not in self.encoded:
            ex = self.examples[i]
            try:
                enc = self.scorer.encode(ex)
                text_only = self.scorer.prepare(ex, with_image=False) if enc.has_image else None
            except DataError as exc:
                logger.warning("skipping %s: %s", ex.id, exc)
                self.encoded[i] = None
                return None
            partner = _swap_partner(self.examples, i)
            choices = [normalize_answer(c) for c in ex.choices] if ex.choices else None
            self.encoded[i] = (enc, text_only, partner.load_image() if partner is not None else None,
                               choices, normalize_answer(ex.answer))
        return self.encoded[i]

    def records(self, todo: list[int]) -> list[dict]:
        from mbias.probes.base import SampleContext

        todo = [i for i in todo if self._encoding(i) is not None]
        prepared = self._prepare([self.encoded[i][0] for i in todo])
        contexts = []
        for i, prep in zip(todo, prepared, strict=True):
            ctx = SampleContext(self.scorer, prep, run_seed=self.config.seed, swap_image=self.encoded[i][2])
            ctx._text_only = self.encoded[i][1]
            contexts.append(ctx)
        self._prefetch(contexts, [self.encoded[i][3:] for i in todo])
        out = []
        for i, ctx in zip(todo, contexts, strict=True):
            ex = ctx.example
            full = ctx.outcome(KEEP, KEEP)
            record = {"id": ex.id, "index": i, "image_key": ex.image_key, "category": ex.category,
                      "question": ex.question, "answer": ex.answer, "prediction": full.prediction,
                      "correct": float(full.correct)}
            if ex.meta.get("cue_answer") is not None:
                record["cue_answer"] = str(ex.meta["cue_answer"])
            record["probes"] = {name: probe.run(ctx) for name, probe in self.probes.items()}
            out.append(record)
        return out

    # ---- image features: one vision pass for every sample's image and every baseline the prefetch needs
    def _prepare(self, encoded: list) -> list:
        from mbias.models.types import Encoded, Prepared

        sc = self.scorer
        prepared = [Prepared(**{f.name: getattr(e, f.name) for f in dataclasses.fields(Encoded)}) for e in encoded]
        with_image = [p for p in prepared if p.image is not None]  # (Prepared.has_image reads the features)
        if not with_image:
            return prepared
        if not _same_shapes([p.pixel_inputs for p in with_image]):  # images of different sizes: one at a time
            return [sc.prepare(e) for e in encoded]
        kinds = sorted({img for img, _ in self.variants if img not in (KEEP, REMOVED)}
                       - {"swap"} if sc.config.masking == "feature" else set())
        batches = [(None, [p.pixel_inputs for p in with_image])]
        batches += [(kind, [sc.baseline_pixels(e, kind) for e in encoded if e.has_image]) for kind in kinds]
        layout = None
        for kind, pixels in batches:
            feats, layout = self._features(pixels) if kind is None else (self._features(pixels)[0], layout)
            for p, f in zip(with_image, feats, strict=True):
                if kind is None:
                    if f.shape[0] != p.n_image_tokens:  # the audit's own check and message
                        return [sc.prepare(e) for e in encoded]
                    p.features = f
                else:
                    p.baseline_features = {**p.baseline_features, kind: f}
        for p, e in zip(prepared, encoded, strict=True):
            if p.image is not None:
                p.pooler_layout = layout
                p.view_box = sc.view_box(e.image)
                p.token_coords = sc.token_coords(e.pixel_inputs, e.image, e.n_image_tokens)
        return prepared

    def _features(self, pixels: list[dict]) -> tuple[list, tuple]:
        """Projected image features [N, D] per image, ``scoring.batch_size`` images a pass, and their layout."""
        bs, out, layout = self.scorer.batch_rows(), [], None
        for start in range(0, len(pixels), bs):
            chunk = pixels[start:start + bs]
            feats, layout = self.scorer._encode_images({k: torch.cat([p[k] for p in chunk]) for k in chunk[0]})
            out.extend(feats)
        return out, layout

    # ---- scoring: every prefetched (sample, variant) in right-padded batches
    def _prefetch(self, contexts: list, answers: list[tuple]) -> None:
        from mbias.variants import MASK

        sc = self.scorer
        jobs = []  # (ctx, variant, prepared, ids [P], feats [N, D] or None, (normalised choices, gold))
        for ctx, normalised in zip(contexts, answers, strict=True):
            if not ctx.prepared.choice_ids:
                continue  # generation: the audit's own path, per sample
            for image, text in self.variants:
                prep = ctx.text_only if image == REMOVED else ctx.prepared
                if prep is None or (image not in (KEEP, REMOVED) and (
                        not prep.has_image or image not in prep.baseline_features)):
                    continue
                ids = prep.prompt_ids.clone()
                if text == MASK and prep.n_question:
                    ids[prep.question_positions] = sc.text_baseline_id()
                feats = None
                if prep.has_image:
                    feats = prep.features if image == KEEP else prep.baseline_features[image]
                jobs.append((ctx, (image, text), prep, ids, feats, normalised))
        for group in _groups(jobs):
            for job, scores in zip(group, self._scores(group), strict=True):
                ctx, variant = job[0], job[1]
                ctx._outcomes[variant] = _outcome(ctx.example, scores, *job[5])

    def _scores(self, jobs: list) -> list:
        """Log-probabilities [C] of each job's choices (summed over answer tokens), as ``score_inputs`` gives them."""
        rows = []  # (job index, answer ids, None: read every choice's first token | c: choice c's summed log-prob)
        for j, (_, _, prep, *_) in enumerate(jobs):
            if all(a.numel() == 1 for a in prep.choice_ids):
                rows.append((j, prep.choice_ids[0], None))
            else:
                rows.extend((j, a, c) for c, a in enumerate(prep.choice_ids))
        rows.sort(key=lambda r: jobs[r[0]][3].numel() + r[1].numel())  # similar lengths share a batch
        scores = [torch.empty(len(job[2].choice_ids)) for job in jobs]
        length = max((jobs[j][3].numel() + a.numel() for j, a, _ in rows), default=1)

        def score(chunk):  # fills ``scores``; the scorer's batching (size, out-of-memory halving) around it
            self._score_chunk(jobs, chunk, scores)
            return torch.empty(0)

        self.scorer._chunks(rows, score, length)
        return scores

    def _score_chunk(self, jobs, chunk, scores) -> None:
        from mbias.models.batching import answer_logits, right_pad

        sc = self.scorer
        dev = sc.device
        pad_id = sc.tokenizer.pad_token_id if sc.tokenizer.pad_token_id is not None else 0
        inputs = right_pad([jobs[j][3] for j, _, _ in chunk], [a for _, a, _ in chunk], pad_id,
                           [jobs[j][2].token_inputs for j, _, _ in chunk], sc._answer_fill)
        answer_mask = inputs.pop("answer_mask")
        kwargs = {k: v.to(dev) for k, v in inputs.items()}
        if jobs[chunk[0][0]][4] is not None:
            feats = torch.stack([jobs[j][4] for j, _, _ in chunk]).to(dev, sc.model.dtype)
            kwargs["mm_encoder_outputs"] = sc._pack(feats, jobs[chunk[0][0]][2].pooler_layout)
            for key in jobs[chunk[0][0]][2].meta_inputs:
                kwargs[key] = torch.cat([jobs[j][2].meta_inputs[key] for j, _, _ in chunk]).to(dev)
        logits, targets, row_of, _ = answer_logits(sc.model, kwargs, answer_mask.to(dev))
        logp = torch.log_softmax(logits.float(), dim=-1)
        first = torch.ones(len(row_of), dtype=torch.bool)
        first[1:] = row_of[1:] != row_of[:-1]
        for b, (j, _, c) in enumerate(chunk):
            at = row_of == b
            if c is None:  # single-token choices: every choice's log-prob at the answer's first position
                tokens = torch.cat(jobs[j][2].choice_ids).to(logp.device)
                scores[j][:] = logp[(at & first.to(at.device)).nonzero()[0, 0], tokens].cpu()
            else:
                scores[j][c] = logp[at].gather(-1, targets[at].unsqueeze(-1)).sum().cpu()


def _prefetch_variants(probes: dict, scorer) -> list[tuple[str, str]]:
    """The (image, question) variants the cheap probes ask each sample for (their ``run``), under their configs;
    scored up front in batches. A probe not listed here gets its variants computed as in an audit."""
    from mbias.variants import MASK

    variants = [(KEEP, KEEP)]
    for name, probe in probes.items():
        absent = getattr(probe.config, "image_absent", None)
        absent = REMOVED if absent == "removed" else scorer.config.image_baseline
        if name == "conflict":
            variants += [(absent, KEEP), (KEEP, MASK)]
        elif name == "modality_shapley":
            variants += [(KEEP, MASK), (absent, KEEP), (absent, MASK)]
    return list(dict.fromkeys(variants))


def _groups(jobs: list) -> list[list]:
    """Jobs that can share a forward pass: with image features of one layout and shape, or without an image."""
    groups: dict = {}
    for job in jobs:
        prep, feats = job[2], job[4]
        key = None if feats is None else (repr(prep.pooler_layout), tuple(feats.shape),
                                          tuple((k, tuple(v.shape[1:])) for k, v in prep.meta_inputs.items()))
        groups.setdefault(key, []).append(job)
    return list(groups.values())


def _outcome(example, scores: torch.Tensor, choices: list[str], gold: str):
    """``SampleContext.evaluate``'s outcome from one variant's choice scores [C] (``choices``: the example's
    choices normalised, ``gold`` its answer normalised)."""
    from mbias.probes.base import Outcome

    gold_idx = choices.index(gold)  # SampleContext's _gold_index: the first choice equal to the answer
    best = int(scores.argmax())
    norm = scores[gold_idx] - torch.logsumexp(scores, dim=0)
    return Outcome(float(scores[gold_idx]), example.choices[best], choices[best] == gold, float(norm))


def _same_shapes(pixels: list[dict]) -> bool:
    return len({tuple((k, tuple(v.shape)) for k, v in p.items()) for p in pixels}) == 1
