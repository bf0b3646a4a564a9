"""Scoring masked variants: teacher-forced answer log-probs, predictions, generation and attention maps.

A variant = the example's prompt ids with some question tokens replaced by a neutral id, plus its image feature
rows with some patch groups replaced by a baseline's rows. It goes through the model's own ``forward`` with
``mm_encoder_outputs`` in place of ``pixel_values``, so every family's own placeholder scatter, positions and
attention masks apply unchanged.
"""

from __future__ import annotations

import logging

import torch

from mbias.errors import MbiasError
from mbias.example import normalize_answer
from mbias.models import geometry
from mbias.models.batching import right_pad
from mbias.models.types import Prediction, Prepared

logger = logging.getLogger(__name__)


class ScoringMixin:
    """Scoring half of ``Scorer`` (which supplies features, baselines, packing and the config)."""

    def variant_inputs(self, prepared: Prepared, image_keep: torch.Tensor | None, text_keep: torch.Tensor | None,
                       *, baseline: str | None = None, swap_image=None, grid: int | None = None):
        """Prompt ids [V, P] and image feature rows [V, N, D] (or None) for keep-masks over players.

        ``image_keep`` [V, G]: the G patch groups of ``scorer.patch_groups(prepared, grid)``;
        ``text_keep`` [V, Q]: the question tokens. None keeps everything of that modality.
        """
        n_var = 1 if image_keep is None and text_keep is None else (
            image_keep if image_keep is not None else text_keep).shape[0]
        ids = prepared.prompt_ids.unsqueeze(0).repeat(n_var, 1)
        if text_keep is not None and prepared.n_question:
            tk = text_keep.to(torch.bool).cpu()
            q = prepared.question_positions
            ids[:, q] = torch.where(tk, ids[:, q], torch.full_like(ids[:, q], self.text_baseline_id()))
        if not prepared.has_image:
            return ids, None
        if image_keep is None or bool(image_keep.all()):
            return ids, prepared.features.unsqueeze(0).expand(n_var, -1, -1)
        groups = self.patch_groups(prepared, grid)
        ik = image_keep.to(torch.bool).cpu()
        if ik.shape[1] != groups.n:
            raise ValueError(f"image_keep has {ik.shape[1]} columns but there are {groups.n} patch groups")
        kind = baseline or self.config.image_baseline
        if self.config.masking == "pixel":
            return ids, self._pixel_masked_features(prepared, ik, kind, swap_image, groups)
        base = self.baseline(prepared, kind, swap_image)
        token_keep = ik[:, groups.token_group].to(prepared.features.device).unsqueeze(-1)  # [V, N, 1]
        return ids, torch.where(token_keep, prepared.features.unsqueeze(0), base.unsqueeze(0))

    def _pixel_masked_features(self, prepared, ik, kind, swap_image, groups):
        base_img = self.baseline_image(prepared, kind, swap_image)
        rows = [None] * ik.shape[0]
        todo = []
        for v in range(ik.shape[0]):
            if bool(ik[v].all()):
                rows[v] = prepared.features
            else:
                masked = [groups.cells[g] for g in (~ik[v]).nonzero().flatten().tolist()]
                todo.append((v, geometry.paint_cells(prepared.image, base_img, masked, groups.grid,
                                                     prepared.view_box)))
        bs = max(1, self.config.batch_size)
        for i in range(0, len(todo), bs):
            chunk = todo[i:i + bs]
            feats = self.image_features_for([img for _, img in chunk])
            for (v, _), f in zip(chunk, feats, strict=True):
                rows[v] = f
        return torch.stack(rows)

    @torch.no_grad()
    def score(self, prepared: Prepared, image_keep: torch.Tensor | None = None,
              text_keep: torch.Tensor | None = None, *, answers: list[torch.Tensor] | None = None,
              baseline: str | None = None, swap_image=None, grid: int | None = None) -> torch.Tensor:
        """Teacher-forced log p(answer | variant), summed over answer tokens.

        ``image_keep`` [V, G] keeps (True) or masks each patch group; ``text_keep`` [V, Q] each question token.
        Returns [V] for the gold answer, or [V, C] when ``answers`` (a list of token-id tensors) is given.
        """
        ids, feats = self.variant_inputs(prepared, image_keep, text_keep, baseline=baseline, swap_image=swap_image,
                                         grid=grid)
        return self.score_inputs(prepared, ids, feats, answers=answers)

    @torch.no_grad()
    def score_inputs(self, prepared: Prepared, ids: torch.Tensor, feats: torch.Tensor | None, *,
                     answers: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Scores for explicit prompt ids [V, P] and feature rows [V, N, D]; see ``score``.

        When every answer is a single token, one row per variant serves them all (the logits that predict the
        first answer token do not depend on which answer follows); otherwise each (variant, answer) is a row.
        """
        single = answers is None
        answers = [prepared.answer_ids] if single else answers
        n_var, n_ans = ids.shape[0], len(answers)
        if all(a.numel() == 1 for a in answers):
            tokens = torch.cat(answers)
            rows = [(v, 0) for v in range(n_var)]
            out = self._chunked(rows, lambda chunk: self._first_token_scores(prepared, ids, feats, tokens, chunk))
        else:
            rows = [(v, c) for v in range(n_var) for c in range(n_ans)]
            out = self._chunked(rows, lambda chunk: self._score_rows(prepared, ids, feats, answers, chunk))
        out = out.view(n_var, n_ans)
        return out[:, 0] if single else out

    def _chunked(self, rows: list, fn) -> torch.Tensor:
        """``fn`` over chunks of ``rows`` of the configured batch size, halving it on out-of-memory."""
        parts, done, bs = [], 0, self.config.batch_size
        while done < len(rows):
            chunk = rows[done:done + bs]
            try:
                parts.append(fn(chunk))
            except torch.OutOfMemoryError:
                if bs == 1:
                    raise MbiasError("out of memory scoring a single variant; use a smaller model, --dtype "
                                     "bfloat16, --load-in-4bit, or a device with more memory") from None
                bs = max(1, bs // 2)
                logger.warning("out of memory; retrying with batch size %d", bs)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            done += len(chunk)
        return torch.cat(parts)

    def _first_token_scores(self, prepared, ids, feats, tokens, rows) -> torch.Tensor:
        """[len(rows) * len(tokens)] log p(token) at the first answer position, for single-token answers."""
        logits, _ = self._forward_rows(prepared, ids, feats, [tokens[:1]], rows)
        logp = torch.log_softmax(logits[:, 0].float(), dim=-1)
        return logp[:, tokens.to(logp.device)].cpu().reshape(-1)

    def _forward_rows(self, prepared, ids, feats, answers, rows, **forward_kwargs):
        """Logits [B, max_a + 1, vocab] at the positions that predict each row's continuation tokens.

        Row b is prompt ``ids[v]`` (+ image rows ``feats[v]``) followed by ``answers[c]`` for ``(v, c) = rows[b]``,
        right-padded. Position t of the output predicts continuation token t.
        """
        dev = self.device
        max_a = max(int(answers[c].numel()) for _, c in rows)
        B = len(rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        padded = right_pad([ids[v] for v, _ in rows], [answers[c] for _, c in rows], pad_id,
                           [prepared.token_inputs] * B, self._answer_fill)
        padded.pop("answer_mask")
        kwargs = {k: v.to(dev) for k, v in padded.items()}
        if feats is not None:
            sel = feats[[v for v, _ in rows]].to(dev, self.model.dtype)
            kwargs["mm_encoder_outputs"] = self._pack(sel, prepared.pooler_layout)
            for k, v in prepared.meta_inputs.items():
                kwargs[k] = v.repeat(B, *([1] * (v.dim() - 1))).to(dev)
        out = self.model(**kwargs, use_cache=False, logits_to_keep=max_a + 1, **forward_kwargs)
        return out.logits[:, :-1], out

    def _score_rows(self, prepared, ids, feats, answers, rows) -> torch.Tensor:
        logits, _ = self._forward_rows(prepared, ids, feats, answers, rows)
        logp = torch.log_softmax(logits.float(), dim=-1)
        dev = logp.device
        scores = torch.empty(len(rows), dtype=torch.float32)
        for b, (_, c) in enumerate(rows):
            a = answers[c].to(dev)
            scores[b] = logp[b, torch.arange(a.numel(), device=dev), a].sum().cpu()
        return scores

    @torch.no_grad()
    def continuation_logprobs(self, prepared: Prepared, ids: torch.Tensor, feats: torch.Tensor | None,
                              continuation: torch.Tensor) -> torch.Tensor:
        """[V, T, vocab] next-token log-distributions along ``continuation`` (T tokens) for each variant."""
        rows = [(v, 0) for v in range(ids.shape[0])]
        logits, _ = self._forward_rows(prepared, ids, feats, [continuation], rows)
        return torch.log_softmax(logits.float(), dim=-1).cpu()

    def _answer_fill(self, key: str) -> int:
        """Value of a per-token extra over answer positions (PaliGemma marks the suffix with token_type 1)."""
        return 1 if key == "token_type_ids" else 0

    # answers, generation, attention
    @torch.no_grad()
    def predict(self, prepared: Prepared, image_keep=None, text_keep=None, *, baseline=None,
                swap_image=None, grid: int | None = None) -> Prediction:
        """The model's answer under a (masked) input: argmax over choices, else greedy generation."""
        ids, feats = self.variant_inputs(prepared, image_keep, text_keep, baseline=baseline, swap_image=swap_image,
                                         grid=grid)
        return self.predict_inputs(prepared, ids, feats)

    def predict_inputs(self, prepared: Prepared, ids: torch.Tensor, feats: torch.Tensor | None) -> Prediction:
        gold = normalize_answer(prepared.example.answer)
        if prepared.choice_ids:
            scores = self.score_inputs(prepared, ids[:1], None if feats is None else feats[:1],
                                       answers=prepared.choice_ids)[0]
            best = int(scores.argmax())
            text = prepared.example.choices[best]
            return Prediction(text, normalize_answer(text) == gold, scores.tolist())
        text = self.generate_inputs(prepared, ids[:1], None if feats is None else feats[:1])
        return Prediction(text, normalize_answer(text) == gold)

    @torch.no_grad()
    def generate_inputs(self, prepared: Prepared, ids: torch.Tensor, feats: torch.Tensor | None,
                        max_new_tokens: int | None = None) -> str:
        dev = self.device
        kwargs = {"input_ids": ids.to(dev), "attention_mask": torch.ones_like(ids).to(dev)}
        kwargs.update({k: v.unsqueeze(0).to(dev) for k, v in prepared.token_inputs.items()})
        if feats is not None:
            kwargs["mm_encoder_outputs"] = self._pack(feats.to(dev, self.model.dtype), prepared.pooler_layout)
            kwargs.update({k: v.to(dev) for k, v in prepared.meta_inputs.items()})
        out = self.model.generate(
            **kwargs, max_new_tokens=max_new_tokens or self.config.max_new_tokens, do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0,
        )
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    @torch.no_grad()
    def attentions(self, prepared: Prepared) -> torch.Tensor:
        """[layers, heads, A, S] attention from the positions that predict answer tokens to every position."""
        previous = self.model.config._attn_implementation
        self.model.set_attn_implementation("eager")  # fused kernels do not return attention weights
        try:
            ids, feats = self.variant_inputs(prepared, None, None)
            P, A = prepared.prompt_ids.shape[0], prepared.answer_ids.numel()
            _, out = self._forward_rows(prepared, ids, feats, [prepared.answer_ids], [(0, 0)],
                                        output_attentions=True)
            # rows P-1 .. P+A-2 predict the answer tokens
            return torch.stack([a[0, :, P - 1:P + A - 1, :].float().cpu() for a in out.attentions])
        finally:
            self.model.set_attn_implementation(previous)
