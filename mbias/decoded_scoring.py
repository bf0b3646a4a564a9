"""The audit's scorer served through a decode-time fix (``mbias.decoding``): ``with_decode(scorer, spec)`` gives a
scorer on the same model whose scores, predictions and generations all go through the fix; ``choice_scores`` is
the served model's answer distribution over an example's choices."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from mbias.decoding import (
    DecodeSpec,
    PairedContrastLogitsProcessor,
    diffusion_noise,
    fused_logprobs,
    parse_decode,
)
from mbias.errors import MbiasError

if TYPE_CHECKING:
    import torch

def _no_grad(fn):
    def wrapped(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    wrapped.__name__, wrapped.__doc__, wrapped.__qualname__ = fn.__name__, fn.__doc__, fn.__qualname__
    return wrapped


class DecodedScoring:
    """Mixed in before a family's scorer class by ``with_decode``: every score, prediction and generation of the
    scorer goes through the fix (probes and the benchmark call the scorer as usual)."""

    decode: DecodeSpec

    # the contrast variant of each (ids, feats) variant
    def _image_free(self, prepared):
        cached = prepared.__dict__.get("_mbias_image_free")
        if cached is None:
            cached = self.prepare(prepared.example, with_image=False)
            prepared.__dict__["_mbias_image_free"] = cached
        return cached

    def _carry_question_mask(self, prepared, free, ids):
        """The image-free prompt [V, P0] with the question tokens masked that ``ids`` masks in ``prepared``'s
        prompt. The question's first token may tokenize differently after the image (a newline before it, say);
        tokens pair by index, or by relative position when the counts differ."""
        import torch

        q, q0 = prepared.question_positions, free.question_positions
        out = free.prompt_ids.unsqueeze(0).repeat(ids.shape[0], 1)
        if not q.numel() or not q0.numel():
            return out
        masked = ids[:, q].cpu() != prepared.prompt_ids[q].unsqueeze(0)  # [V, Q]
        if q.numel() == q0.numel():
            pick = torch.arange(q.numel())
        else:
            pick = torch.round(torch.arange(q0.numel()) * (q.numel() - 1) / max(1, q0.numel() - 1)).long()
        cols = out[:, q0]
        out[:, q0] = torch.where(masked[:, pick], torch.full_like(cols, self.text_baseline_id()), cols)
        return out

    def _noised_features(self, prepared):
        import torch

        cached = prepared.__dict__.get("_mbias_vcd")
        if cached is None or cached[0] != self.decode.noise_step:
            seed = int(hashlib.sha256(f"{self.config.noise_seed}:vcd:{prepared.example.id}".encode())
                       .hexdigest()[:8], 16)
            pix = dict(prepared.pixel_inputs)
            pix["pixel_values"] = diffusion_noise(pix["pixel_values"], self.decode.noise_step, seed)
            feats, _ = self._encode_images(pix)
            cached = (self.decode.noise_step, feats[0].to(prepared.features.device))
            prepared.__dict__["_mbias_vcd"] = cached
        return torch.as_tensor(cached[1])

    def contrast_inputs(self, prepared, ids, feats):
        """(prepared, ids, feats) of the contrast branch for variants ``ids`` [V, P], ``feats`` [V, N, D]; None
        when a variant has no image (it is its own contrast)."""
        import torch

        if feats is None or not prepared.has_image:
            return None
        if self.decode.method == "contrastive":
            free = self._image_free(prepared)
            return free, self._carry_question_mask(prepared, free, ids), None
        noised = self._noised_features(prepared)
        from_image = (feats == prepared.features.to(feats.device).unsqueeze(0)).all(-1, keepdim=True)
        return prepared, ids, torch.where(from_image, noised.to(feats.device, feats.dtype).unsqueeze(0), feats)

    # scoring
    def _pair_logits(self, prepared, ids, feats, answers, rows, contrast):
        """Main and contrast logits [T, vocab] at every position that predicts an answer token of ``rows``
        ((variant, answer) pairs), both branches in one forward, and each position's target token and row."""
        import torch

        from mbias.models.batching import right_pad

        cprep, cids, cfeats = contrast
        prompts = [ids[v] for v, _ in rows] + [cids[v] for v, _ in rows]
        conts = [answers[c] for _, c in rows] * 2
        extras = [prepared.token_inputs] * len(rows) + [cprep.token_inputs] * len(rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        padded = right_pad(prompts, conts, pad_id, extras, self._answer_fill)
        answer_mask = padded.pop("answer_mask")
        predicts = torch.zeros_like(answer_mask)
        predicts[:, :-1] = answer_mask[:, 1:]
        dev = self.device
        kwargs = {k: v.to(dev) for k, v in padded.items()}
        sel = [feats[v] for v, _ in rows] + ([] if cfeats is None else [cfeats[v] for v, _ in rows])
        kwargs["mm_encoder_outputs"] = self._pack(torch.stack(sel).to(dev, self.model.dtype), prepared.pooler_layout)
        for k, v in prepared.meta_inputs.items():
            kwargs[k] = v.repeat(len(sel), *([1] * (v.dim() - 1))).to(dev)
        out = self.model(**kwargs, use_cache=False, logits_to_keep=predicts.to(dev))
        half = int(answer_mask[: len(rows)].sum())
        targets = padded["input_ids"][answer_mask][:half]
        row_of = answer_mask[: len(rows)].nonzero()[:, 0]
        return out.logits[:half], out.logits[half:], targets, row_of

    @_no_grad
    def score_inputs(self, prepared, ids, feats, *, answers=None):
        import torch

        contrast = self.contrast_inputs(prepared, ids, feats)
        single = answers is None
        answers = [prepared.answer_ids] if single else answers
        n_var, n_ans = ids.shape[0], len(answers)
        first_only = all(a.numel() == 1 for a in answers)
        tokens = torch.cat(answers) if first_only else None

        def run(chunk):
            if contrast is None:
                main, targets, row_of = self._main_logits(prepared, ids, feats, answers, chunk, first_only)
                other = main
            else:
                run_answers = [tokens[:1]] if first_only else answers
                main, other, targets, row_of = self._pair_logits(prepared, ids, feats, run_answers, chunk, contrast)
            logp = fused_logprobs(main, other, self.decode)
            if first_only:
                return logp[:, tokens.to(logp.device)].cpu().reshape(-1)
            lp = logp.gather(-1, targets.to(logp.device).unsqueeze(-1)).squeeze(-1).cpu()
            return torch.zeros(len(chunk)).index_add(0, row_of.cpu(), lp)

        rows = [(v, 0) for v in range(n_var)] if first_only else [(v, c) for v in range(n_var) for c in range(n_ans)]
        out = self._chunked(rows, run).view(n_var, n_ans)
        return out[:, 0] if single else out

    def _main_logits(self, prepared, ids, feats, answers, rows, first_only):
        """Logits of the main branch alone (a variant with no image), in the layout of ``_pair_logits``."""
        import torch

        if first_only:
            logits, _ = self._forward_rows(prepared, ids, feats, [answers[0][:1]], rows)
            return logits[:, 0], None, None
        logits, _ = self._forward_rows(prepared, ids, feats, answers, rows)
        keep, targets, row_of = [], [], []
        for b, (_, c) in enumerate(rows):
            a = answers[c]
            keep.append(logits[b, : a.numel()])
            targets.append(a)
            row_of.append(torch.full((a.numel(),), b))
        return torch.cat(keep), torch.cat(targets), torch.cat(row_of)

    @_no_grad
    def continuation_logprobs(self, prepared, ids, feats, continuation):
        """[V, T, vocab] next-token log-distributions (fused, cut tokens at ``FLOOR``) along ``continuation``."""
        rows = [(v, 0) for v in range(ids.shape[0])]
        contrast = self.contrast_inputs(prepared, ids, feats)
        if contrast is None:
            main = super().continuation_logprobs(prepared, ids, feats, continuation)  # log-softmaxed logits
            return fused_logprobs(main, main, self.decode)
        main, other, _, _ = self._pair_logits(prepared, ids, feats, [continuation], rows, contrast)
        t = continuation.numel()
        return fused_logprobs(main, other, self.decode).cpu().view(len(rows), t, -1)

    # generation: both branches as rows of one generate call
    @_no_grad
    def generate_inputs(self, prepared, ids, feats, max_new_tokens=None):
        import torch
        from transformers import LogitsProcessorList

        contrast = self.contrast_inputs(prepared, ids[:1], None if feats is None else feats[:1])
        if contrast is None:  # no image: the fix is plain greedy decoding (the cut never removes the argmax)
            return super().generate_inputs(prepared, ids, feats, max_new_tokens)
        cprep, cids, cfeats = contrast
        rows = [(ids[0], prepared.token_inputs), (cids[0], cprep.token_inputs)]
        length = max(r.numel() for r, _ in rows)
        dev = self.device
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((2, length), pad_id, dtype=torch.long)
        mask = torch.zeros((2, length), dtype=torch.long)
        extra = {k: torch.zeros((2, length), dtype=v.dtype) for k, v in prepared.token_inputs.items()}
        for b, (r, tok_inputs) in enumerate(rows):  # left-padded, as batched generation expects
            input_ids[b, length - r.numel():] = r
            mask[b, length - r.numel():] = 1
            for k, v in tok_inputs.items():
                extra[k][b, length - r.numel():] = v
        sel = feats[:1] if cfeats is None else torch.cat([feats[:1], cfeats[:1]])
        kwargs = {"input_ids": input_ids.to(dev), "attention_mask": mask.to(dev),
                  **{k: v.to(dev) for k, v in extra.items()},
                  "mm_encoder_outputs": self._pack(sel.to(dev, self.model.dtype), prepared.pooler_layout)}
        kwargs.update({k: v.repeat(sel.shape[0], *([1] * (v.dim() - 1))).to(dev)
                       for k, v in prepared.meta_inputs.items()})
        out = self.model.generate(
            **kwargs, max_new_tokens=max_new_tokens or self.config.max_new_tokens, do_sample=False,
            logits_processor=LogitsProcessorList([PairedContrastLogitsProcessor(self.decode)]), pad_token_id=pad_id,
        )
        return self.tokenizer.decode(out[0, length:], skip_special_tokens=True).strip()


def with_decode(scorer, decode: str | DecodeSpec | None):
    """``scorer`` (a ``mbias.models.Scorer``) served through ``decode``: a new scorer on the same model and caches
    whose scores, predictions and generations all go through the fix. None: ``scorer`` itself."""
    spec = parse_decode(decode)
    base = type(scorer)
    if isinstance(scorer, DecodedScoring):
        base = next(c for c in base.__mro__[1:] if not issubclass(c, DecodedScoring))
    if spec is None:
        if base is type(scorer):
            return scorer
        plain = object.__new__(base)
        plain.__dict__.update({k: v for k, v in scorer.__dict__.items() if k != "decode"})
        return plain
    cls = type(f"Decoded{base.__name__}", (DecodedScoring, base), {})
    served = object.__new__(cls)
    served.__dict__.update(scorer.__dict__)  # shares the model, processor and text caches
    served.decode = spec
    return served


def choice_scores(scorer, example, decode: str | DecodeSpec | None = None) -> torch.Tensor:
    """[C] log p(choice) of each of ``example``'s choices on its full input (image and question), through the
    decode-time fix ``decode`` (None: plain scoring). ``scorer`` is a loaded ``mbias.models.Scorer``
    (``mbias.models.load_model`` / ``wrap_model``); ``example`` an ``mbias.example.Example`` or a ``Prepared`` of it.
    The argmax is the served model's answer; what the audit's probes score for the full input."""
    from mbias.models.types import Prepared

    served = with_decode(scorer, decode)
    prepared = example if isinstance(example, Prepared) else served.prepare(example)
    if not prepared.choice_ids:
        raise MbiasError(f"{prepared.example.id}: choice_scores needs an example with choices")
    ids, feats = served.variant_inputs(prepared, None, None)
    return served.score_inputs(prepared, ids, feats, answers=prepared.choice_ids)[0]


__all__ = ["DecodedScoring", "with_decode", "choice_scores"]
