"""Scoring masked variants: teacher-forced answer log-probs, predictions, generation and attention maps.

A variant = the example's prompt ids with some question tokens replaced by a neutral id, plus its image feature
rows with some patch groups replaced by a baseline's rows. It goes through the model's own ``forward`` with
``mm_encoder_outputs`` in place of ``pixel_values``, so every family's own placeholder scatter, positions and
attention masks apply unchanged.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from mbias.errors import MbiasError
from mbias.example import normalize_answer
from mbias.models import geometry, prefix
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
        bs = self.batch_rows()
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
            out = self._chunked(rows, lambda chunk: self._first_token_scores(prepared, ids, feats, tokens, chunk),
                                inputs=(prepared, ids, feats), width=n_ans)
        else:
            rows = [(v, c) for v in range(n_var) for c in range(n_ans)]
            out = self._chunked(rows, lambda chunk: self._score_rows(prepared, ids, feats, answers, chunk),
                                inputs=(prepared, ids, feats))
        out = out.view(n_var, n_ans)
        return out[:, 0] if single else out

    def _chunked(self, rows: list, fn, *, inputs=None, width: int = 1) -> torch.Tensor:
        """``fn`` over chunks of ``rows`` of the configured batch size, halving it on out-of-memory.

        With ``inputs`` (prepared, ids, feats) and the prefix cache on, identical rows are scored once (so they get
        identical values: a null player's marginal is exactly 0) and the rest in prefix order, so the rows of one
        chunk share as much of their prompts as they can (``_forward_rows`` reuses it); ``fn`` returns ``width``
        values per row, and the result is in the order of ``rows``."""
        length = 512 if inputs is None else int(inputs[1].shape[1])
        if inputs is None or not self.config.prefix_cache or self._prefix_ok is False or len(rows) < 2:
            return self._chunks(rows, fn, length)
        ident = prefix.token_identities(*inputs)[[v for v, _ in rows]]
        table = np.concatenate([ident, np.array([[c] for _, c in rows], dtype=np.int64)], axis=1)
        _, first, inverse = np.unique(table, axis=0, return_index=True, return_inverse=True)  # sorted: prefix order
        out = self._chunks([rows[i] for i in first], fn, length).view(len(first), width)
        return out[torch.from_numpy(inverse.reshape(-1))].reshape(-1)

    # rows per forward pass under ``batch_size: auto`` on a CPU (larger batches do not run faster there)
    CPU_BATCH_ROWS = 32
    # rows x tokens of the largest batch that has not run out of memory on this model: kept in tokens, so an
    # out-of-memory error on a long prompt (a large image) does not cap the batches of short ones
    _token_ceiling: int | None = None

    def batch_rows(self, length: int = 512) -> int:
        """Rows of ``length`` tokens per forward pass: the configured batch size or, under ``auto``, an estimate of
        what fits (what is computed and held per token: the key/value cache of every layer, about 16 hidden-sized
        activations in flight, and float32 logits per row), capped by any size that ran out of memory before.

        On a GPU under ``auto`` the size follows free memory, so where rows fall between forward passes, and the
        last bits of their scores, can differ between runs; a fixed ``batch_size`` makes them repeatable."""
        rows = self.config.batch_size
        if rows == "auto":
            rows = self.CPU_BATCH_ROWS
            if self.device.type == "cuda":
                text = self.model.config.get_text_config()
                size = torch.finfo(self.model.dtype).bits // 8
                per_token = text.hidden_size * size * (2 * text.num_hidden_layers + 16)
                per_row = length * per_token + 4 * 4 * getattr(text, "vocab_size", 32000)
                free, _ = torch.cuda.mem_get_info(self.device)
                rows = int(min(1024, max(1, 0.7 * free // per_row)))
        if self._token_ceiling is not None:
            rows = min(rows, self._token_ceiling // max(1, length))
        return max(1, rows)

    def _chunks(self, rows: list, fn, length: int = 512) -> torch.Tensor:
        parts, done, bs = [], 0, self.batch_rows(length)
        while done < len(rows):
            chunk = rows[done:done + bs]
            try:
                parts.append(fn(chunk))
            except torch.OutOfMemoryError:
                if bs == 1:
                    raise MbiasError("out of memory scoring a single variant; use a smaller model, --dtype "
                                     "bfloat16, --load-in-4bit, or a device with more memory") from None
                bs = max(1, bs // 2)
                self._token_ceiling = bs * max(1, length)
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
        right-padded. Position t of the output predicts continuation token t. Rows that share a prompt prefix
        share its computation when the prefix cache is on (``_forward_shared``).
        """
        if self.config.prefix_cache and self._prefix_ok is not False and not forward_kwargs and len(rows) > 1:
            sel = [v for v, _ in rows]
            lengths = [int(answers[c].numel()) for _, c in rows]
            shared = prefix.plan(prefix.token_identities(prepared, ids[sel], None if feats is None else feats[sel]),
                                 max(lengths))
            if shared is not None and self._prefix_ok is None:  # first use on this model: check it
                logits = self._check_prefix_cache(
                    lambda: self._forward_shared(prepared, ids, feats, answers, rows, shared),
                    self._forward_full(prepared, ids, feats, answers, rows)[0], lengths)
                # the checked batch is scored like any other (by the rows, not by what ran first): a resumed run
                # gives the numbers of an uninterrupted one
                if logits is not None:
                    return logits, None
            elif shared is not None and self._prefix_ok:
                return self._forward_shared(prepared, ids, feats, answers, rows, shared), None
        return self._forward_full(prepared, ids, feats, answers, rows, **forward_kwargs)

    def _forward_full(self, prepared, ids, feats, answers, rows, **forward_kwargs):
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

    # ----------------------------------------------------------------------------------------------------------
    # the prefix cache
    _prefix_ok: bool | None = None  # None: not checked on this model yet

    def _forward_shared(self, prepared, ids, feats, answers, rows, shared: prefix.Plan) -> torch.Tensor:
        """``_forward_rows``'s logits, computing each level of ``shared`` once per distinct prefix and the tail
        (rest of the prompt, then the answer) per row on top of its prefix's key/value cache.

        Levels go through the model's forward as ``inputs_embeds`` (token embeddings with the image feature rows
        placed at the image positions, what the family's own scatter produces) with explicit position ids
        (``prompt_positions``: M-RoPE for Qwen2-VL), so a level may end inside the image."""
        from transformers import DynamicCache

        dev, dtype = self.device, self.model.dtype
        embed = self.model.get_input_embeddings()
        sel = torch.tensor([v for v, _ in rows])
        max_a = max(int(answers[c].numel()) for _, c in rows)
        P = ids.shape[1]
        positions = self.prompt_positions(prepared, P + max_a).to(dev)
        image_at = torch.full((P,), -1, dtype=torch.long)
        if feats is not None:
            image_at[prepared.image_positions] = torch.arange(prepared.n_image_tokens)

        def embeddings(variants: torch.Tensor, start: int, end: int) -> torch.Tensor:
            x = embed(ids[variants, start:end].to(dev))
            slot = image_at[start:end]
            where = (slot >= 0).nonzero().flatten()
            if len(where):
                x[:, where.to(dev)] = feats[variants[:, None], slot[where][None, :]].to(dev, x.dtype)
            return x

        def select(kv, index) -> DynamicCache | None:
            if kv is None:
                return None
            index = torch.as_tensor(index, device=dev)
            # the config gives each layer its own kind (a sliding-window layer keeps only its window), as in the
            # cache the model makes for itself
            return DynamicCache(ddp_cache_data=[(k.index_select(0, index), v.index_select(0, index)) for k, v in kv],
                                config=self.model.config)

        def run(x, start, cache, mask, n_keep):
            n, length = x.shape[0], x.shape[1]
            pos = positions[..., start:start + length]
            pos = pos.unsqueeze(-2).expand(*pos.shape[:-1], n, length) if pos.dim() > 1 else pos.expand(n, length)
            return self.model(inputs_embeds=x.to(dtype), attention_mask=mask, position_ids=pos, cache=cache,
                              use_cache=True, logits_to_keep=n_keep)

        kv = None
        for level in shared.levels:
            variants = sel[level.rows]
            out = run(embeddings(variants, level.start, level.end), level.start,
                      select(kv, level.parent) if level.parent is not None else None,
                      torch.ones(len(variants), level.end, dtype=torch.long, device=dev), 1)
            kv = [(layer.keys, layer.values) for layer in out.cache.layers]
        start = shared.tail_start
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        tail = right_pad([ids[v, start:] for v, _ in rows], [answers[c] for _, c in rows], pad_id,
                         [{}] * len(rows), self._answer_fill)
        x = embeddings(sel, start, P)
        x = torch.cat([x, embed(tail["input_ids"][:, P - start:].to(dev))], dim=1)
        mask = torch.cat([torch.ones(len(rows), start, dtype=torch.long), tail["attention_mask"]], dim=1)
        out = run(x, start, select(kv, shared.tail_parent), mask.to(dev), max_a + 1)
        return out.logits[:, :-1]

    def prompt_positions(self, prepared, length: int) -> torch.Tensor:
        """Position ids of a prompt of ``prepared``'s layout followed by ``length - P`` answer tokens: [length],
        or [k, length] for families with multi-axis positions (family hook; Qwen2-VL's M-RoPE)."""
        return torch.arange(length)

    def _check_prefix_cache(self, shared, full: torch.Tensor, lengths: list[int]) -> torch.Tensor | None:
        """``shared()``'s logits if they give the full forward's log-probabilities at every position that predicts
        an answer token (row b's first ``lengths[b]``; the padding after a short answer is scored by neither path),
        else None; the verdict holds for this model from then on. Tolerance: 1e-3 in float32; in half precision
        0.05 or four rounding steps of the largest logit, whichever is larger (a bf16 logit near 30 moves in steps
        of 0.125, so one rounding flip is not a disagreement). A forward that refuses the cache, or computes more
        than a causal prefix, fails it; a family known to do the latter (PaliGemma's bidirectional prefix) sets
        ``_prefix_ok = False`` instead of relying on one batch to show it."""
        try:
            logits = shared()
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - any refusal means: not on this model
            self._prefix_ok = False
            logger.warning("prefix cache off for this model (its forward refused it: %s); every variant runs in full",
                           e)
            return None
        scored = torch.arange(full.shape[1])[None, :] < torch.tensor(lengths)[:, None]
        ours, theirs = logits.float()[scored.to(logits.device)], full.float()[scored.to(full.device)]
        tol = 1e-3
        if self.model.dtype != torch.float32:
            tol = max(5e-2, 4 * torch.finfo(self.model.dtype).eps * float(theirs.abs().max()))
        gap = float((torch.log_softmax(ours, -1) - torch.log_softmax(theirs, -1)).abs().max())
        self._prefix_ok = gap <= tol
        if not self._prefix_ok:
            logger.warning("prefix cache off for this model: it differs from the full forward by %.2g (tolerance "
                           "%.2g); every variant runs in full", gap, tol)
            return None
        return logits

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
