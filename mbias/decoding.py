"""Decode-time fixes for a language prior: contrastive decoding against the model's own prediction without the
image (``contrastive``) or with a distorted image (``vcd``), as ``transformers`` logits processors and as an audit
mode, so an audit measures the model as it will be served.

The formula, per next-token distribution (raw logits, as in the papers)::

    fused = logits(x, v) + alpha * (logits(x, v) - logits(x, v'))      # = (1 + alpha) l - alpha l'  (VCD's form)
    v' = no image at all                              (contrastive)
    v' = v with forward-diffusion noise at step t     (vcd: Leng et al. 2024, "Visual Contrastive Decoding")
    beta > 0: tokens with p(x, v) < beta * max p(x, v) get -inf        (VCD's adaptive plausibility constraint)

``alpha = 0`` is plain decoding. Defaults: ``contrastive`` alpha=1, beta=0 (no cut); ``vcd`` alpha=1, beta=0.1,
noise_step=500 (VCD's defaults; noise schedule: 1000 steps, betas = sigmoid(linspace(-6, 6)) scaled to
[1e-5, 5e-3], applied to the processed pixel values).

Three ways in:

- your own ``model.generate(...)``: ``decoding_processors(model, processor, inputs, "contrastive:alpha=1")`` builds
  the ``LogitsProcessorList``; its processor runs the contrast branch itself, with its own KV cache, one token per
  generated token (greedy decoding or sampling; not beam search, which reorders rows);
- the audit: ``mbias audit --decode contrastive:alpha=1`` / ``mbias.audit(..., decode=...)`` scores every probe's
  variants and generates through the fix (``mbias.decoded_scoring.with_decode``). There the contrast pass is batched with the main one:
  scoring puts both branches' rows in one forward, generation runs both as rows of one ``generate`` call (each row
  its own KV cache) with ``PairedContrastLogitsProcessor`` giving both rows the fused scores, so they choose the
  same tokens;
- a benchmark: ``mbias.decoded_scoring.choice_scores(scorer, example, decode)``.

How the audit's masked variants are contrasted: ``contrastive`` pairs a variant with the image-free prompt carrying
the same question tokens (masked ones stay masked); ``vcd`` pairs it with the same variant whose image-feature rows
taken from the example's image come from the noised image instead (rows a probe already replaced by a baseline stay:
with pixel-level masking (``--masking pixel``) only the unmasked variants get the contrast). A variant without an
image is its own contrast (the fix is then plain decoding, with the plausibility cut when ``beta > 0``).
Teacher-forced scores take ``log_softmax(fused)`` at each answer token; a token the plausibility cut removes scores
``FLOOR`` (-100, not -inf, so means, differences and Shapley values stay finite).

Cost (extra forward tokens per generated token): 1, plus the contrast prompt's prefill once per sequence (the
image-free prompt for ``contrastive``; the full prompt and one more vision-tower pass for ``vcd``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mbias.errors import ConfigError, MbiasError

if TYPE_CHECKING:
    import torch

# method -> its settings and their defaults
METHODS: dict[str, dict[str, float | int]] = {
    "contrastive": {"alpha": 1.0, "beta": 0.0},
    "vcd": {"alpha": 1.0, "beta": 0.1, "noise_step": 500},
}
_EXAMPLE = {"contrastive": "contrastive:alpha=1", "vcd": "vcd:alpha=1,beta=0.1,noise_step=500"}
FLOOR = -100.0  # teacher-forced log-prob of a token the plausibility cut removed
NOISE_STEPS = 1000


@dataclass(frozen=True)
class DecodeSpec:
    """A parsed ``NAME[:k=v,...]``; ``str(spec)`` is its canonical form (every setting spelled out)."""

    method: str
    alpha: float = 1.0
    beta: float = 0.0
    noise_step: int | None = None  # vcd only

    def __str__(self) -> str:
        return f"{self.method}:" + ",".join(f"{k}={_fmt(v)}" for k, v in self.settings().items())

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in METHODS[self.method]}

    def to_dict(self) -> dict:
        """What summary.json and the manifest record."""
        return {"spec": str(self), "method": self.method, **self.settings()}


def _fmt(v) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def parse_decode(spec: str | DecodeSpec | dict | None) -> DecodeSpec | None:
    """``NAME[:k=v,...]`` (or a ``DecodeSpec``, or a dict with ``method``) -> ``DecodeSpec``; None, ``""`` and
    ``"none"`` -> None (plain decoding). A bad spec raises ``ConfigError`` with one line that says what to write."""
    if spec is None or isinstance(spec, DecodeSpec):
        return spec
    if isinstance(spec, dict):
        values = dict(spec)
        values.pop("spec", None)
        method = values.pop("method", None)
        if not isinstance(method, str):
            raise ConfigError(f"decode: a mapping needs method: {' or '.join(METHODS)}; got {spec!r:.80}")
        return _build(method, values, str(spec))
    if not isinstance(spec, str):
        raise ConfigError(f"decode must be NAME[:k=v,...], e.g. {_EXAMPLE['contrastive']}; got {spec!r:.80}")
    text = spec.strip()
    if text.lower() in ("", "none", "greedy", "plain"):
        return None
    name, _, rest = text.partition(":")
    values: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key or not value.strip():
            raise ConfigError(f"--decode {text}: settings are k=v pairs separated by commas, e.g. "
                              f"{_EXAMPLE.get(name.strip(), _EXAMPLE['contrastive'])}")
        if key in values:
            raise ConfigError(f"--decode {text}: {key} is given twice")
        values[key] = value.strip()
    return _build(name.strip(), values, text)


def _build(method: str, values: dict, text: str) -> DecodeSpec:
    import difflib

    if method not in METHODS:
        close = difflib.get_close_matches(method, list(METHODS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"--decode {text}: unknown decode-time fix {method!r}; {hint}known: "
                          f"{', '.join(METHODS)} (e.g. {_EXAMPLE['contrastive']})")
    known = METHODS[method]
    settings = dict(known)
    for key, raw in values.items():
        if key not in known:
            raise ConfigError(f"--decode {text}: {method} has no setting {key!r}; its settings: "
                              f"{', '.join(known)} (e.g. {_EXAMPLE[method]})")
        integer = isinstance(known[key], int) and not isinstance(known[key], bool)
        try:
            if isinstance(raw, bool):
                raise ValueError
            value = (int(raw) if not isinstance(raw, float) or float(raw).is_integer() else None) if integer \
                else float(raw)
            if value is None:
                raise ValueError
        except (TypeError, ValueError):
            kind = "an integer" if integer else "a number"
            raise ConfigError(f"--decode {text}: {key} must be {kind}, got {raw!r} (e.g. {_EXAMPLE[method]})") \
                from None
        settings[key] = value
    alpha, beta = settings["alpha"], settings["beta"]
    if not math.isfinite(alpha) or alpha < 0:
        raise ConfigError(f"--decode {text}: alpha must be a finite number >= 0 (0 is plain decoding), got {alpha}")
    if not (0 <= beta < 1):
        raise ConfigError(f"--decode {text}: beta (the plausibility cut) must be in [0, 1), got {beta}")
    step = settings.get("noise_step")
    if step is not None and not (0 <= step < NOISE_STEPS):
        raise ConfigError(f"--decode {text}: noise_step must be an integer in [0, {NOISE_STEPS - 1}], got {step}")
    return DecodeSpec(method, float(alpha), float(beta), None if step is None else int(step))


# ----------------------------------------------------------------------------------------------------------------
# the formula
def fuse_logits(main: torch.Tensor, contrast: torch.Tensor, spec: DecodeSpec) -> torch.Tensor:
    """``main + alpha * (main - contrast)`` in float32, with VCD's plausibility cut on ``main`` when beta > 0."""
    import torch

    main = main.float()
    fused = main + spec.alpha * (main - contrast.float())
    if spec.beta > 0:
        cutoff = math.log(spec.beta) + main.max(dim=-1, keepdim=True).values
        fused = fused.masked_fill(main < cutoff, float("-inf"))
    return torch.as_tensor(fused)


def fused_logprobs(main: torch.Tensor, contrast: torch.Tensor, spec: DecodeSpec) -> torch.Tensor:
    """``log_softmax`` of the fused logits, cut tokens at ``FLOOR``: what teacher-forced scores read."""
    import torch

    logp = torch.log_softmax(fuse_logits(main, contrast, spec), dim=-1)
    return logp.clamp(min=FLOOR)


def diffusion_noise(pixel_values: torch.Tensor, noise_step: int, seed: int) -> torch.Tensor:
    """VCD's distortion: ``sqrt(abar_t) x + sqrt(1 - abar_t) eps`` on the processed pixels, eps from ``seed``."""
    import torch

    betas = torch.sigmoid(torch.linspace(-6, 6, NOISE_STEPS, dtype=torch.float64)) * (0.5e-2 - 1e-5) + 1e-5
    abar = torch.cumprod(1 - betas, dim=0)[noise_step]
    gen = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(pixel_values.shape, generator=gen, dtype=torch.float32)
    noised = abar.sqrt().float() * pixel_values.detach().float().cpu() + (1 - abar).sqrt().float() * eps
    return noised.to(device=pixel_values.device, dtype=pixel_values.dtype)


# ----------------------------------------------------------------------------------------------------------------
# logits processors
def _processor_base():
    from transformers import LogitsProcessor

    return LogitsProcessor


class _RopeState:
    """Models with 3-D rotary positions (Qwen2-VL) keep ``rope_deltas`` on a module between generation steps; a
    second branch keeps its own, swapped in around its passes, so the main branch's state is never touched."""

    def __init__(self, model):
        self.holders = [m for m in model.modules() if hasattr(m, "rope_deltas")]
        self.mine: list = [None] * len(self.holders)

    def __enter__(self):
        self.saved = [m.rope_deltas for m in self.holders]
        for m, v in zip(self.holders, self.mine, strict=True):
            m.rope_deltas = v

    def __exit__(self, *exc):
        self.mine = [m.rope_deltas for m in self.holders]
        for m, v in zip(self.holders, self.saved, strict=True):
            m.rope_deltas = v


class ContrastBranchLogitsProcessor(_processor_base()):
    """Contrastive decoding for any ``model.generate``: ``scores`` (the main branch's next-token logits) become
    ``fuse_logits(scores, contrast)``, where ``contrast`` comes from a second branch this processor runs itself on
    ``branch_inputs`` (the image-free or noised-image prompt, as the model's forward takes it), with its own KV cache,
    fed each generated token. Build it with ``decoding_processors``.

    Works with greedy decoding and sampling (also ``num_return_sequences``); not with beam search (beams reorder).
    One processor serves one ``generate`` call: ``reset()`` (or a new processor) before the next."""

    def __init__(self, model, branch_inputs: dict[str, Any], spec: DecodeSpec | str):
        self.model = model
        self.spec = parse_decode(spec)
        if self.spec is None:
            raise ConfigError("ContrastBranchLogitsProcessor needs a decode spec, e.g. contrastive:alpha=1")
        self.branch_inputs = dict(branch_inputs)
        self._rope = _RopeState(model)
        self.reset()

    def reset(self) -> None:
        self._cache, self._mask, self._seen = None, None, 0
        self._rope.mine = [None] * len(self._rope.holders)

    def contrast_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, vocab] next-token logits of the contrast branch after the tokens generated so far."""
        import torch

        n = input_ids.shape[0]
        if self._cache is None:
            kwargs = {k: v for k, v in self.branch_inputs.items() if v is not None and k != "labels"}
            rows = kwargs["input_ids"].shape[0]
            if n != rows:
                if n % rows:
                    raise MbiasError(f"the contrast branch has {rows} rows but generation has {n}; build the "
                                     "processors from the same inputs you pass to generate")
                kwargs = _repeat_rows(kwargs, n // rows, rows)
            self._mask = kwargs.get("attention_mask", torch.ones_like(kwargs["input_ids"]))
            kwargs["attention_mask"] = self._mask
            self._seen = input_ids.shape[1]
        else:
            new = input_ids[:, self._seen:]
            self._seen = input_ids.shape[1]
            self._mask = torch.cat([self._mask, self._mask.new_ones(n, new.shape[1])], dim=1)
            kwargs = {"input_ids": new, "attention_mask": self._mask, "cache": self._cache}
            deltas = next((v for v in self._rope.mine if v is not None), None)
            if deltas is not None:  # 3-D rotary positions (Qwen2-VL): the text position plus the branch's delta
                pos = (self._mask.cumsum(-1) - 1).clamp(min=0)[:, -new.shape[1]:]
                kwargs["position_ids"] = pos.unsqueeze(0).expand(3, -1, -1) + deltas.to(pos.device)
        with self._rope, torch.no_grad():
            out = self.model(**kwargs, use_cache=True, logits_to_keep=1)
        self._cache = out.get("cache", None) if hasattr(out, "get") else None
        if self._cache is None:
            self._cache = getattr(out, "past_key_values", None)
        return out.logits[:, -1]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return fuse_logits(scores, self.contrast_logits(input_ids).to(scores.device), self.spec)


def _repeat_rows(kwargs: dict, k: int, rows: int) -> dict:
    """Each row's inputs ``k`` times in a row (as generate expands inputs for num_return_sequences)."""
    out = {}
    for key, v in kwargs.items():
        if hasattr(v, "shape") and v.dim() and v.shape[0] == rows and key not in ("pixel_values", "image_grid_thw",
                                                                                   "image_sizes"):
            out[key] = v.repeat_interleave(k, dim=0)
        elif key in ("pixel_values", "image_grid_thw", "image_sizes") and hasattr(v, "shape"):
            out[key] = v.repeat(k, *([1] * (v.dim() - 1))) if rows == 1 else v.repeat_interleave(k, dim=0)
        else:
            out[key] = v
    return out


class PairedContrastLogitsProcessor(_processor_base()):
    """The batched form: generation runs 2B rows, the main branch's B rows then their contrast rows; each row keeps
    its own KV cache, and every row gets the fused scores of its pair, so under greedy decoding both rows of a pair
    choose the same token and the contrast row stays conditioned on the main row's text (checked at each step)."""

    def __init__(self, spec: DecodeSpec | str):
        self.spec = parse_decode(spec)
        self._start = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import torch

        b = scores.shape[0] // 2
        if self._start is None:
            self._start = input_ids.shape[1]
        elif not torch.equal(input_ids[:b, self._start:], input_ids[b:, self._start:]):
            raise MbiasError("the paired contrast rows diverged; PairedContrastLogitsProcessor needs greedy decoding")
        fused = fuse_logits(scores[:b], scores[b:], self.spec)
        return torch.cat([fused, fused]).to(scores.dtype)


def image_token_ids(model) -> list[int]:
    """The ids of image placeholder and image-wrapper tokens in a model's config (dropped for the image-free
    branch of ``decoding_processors``)."""
    cfg = model.config
    ids = []
    for name in ("image_token_id", "image_token_index", "vision_start_token_id", "vision_end_token_id",
                 "boi_token_id", "eoi_token_id"):
        value = getattr(cfg, name, None)
        if value is not None:
            ids.append(int(value))
    return ids


def decoding_processors(model, processor, inputs: dict, decode: str | DecodeSpec, *, image_free_inputs=None,
                        seed: int = 0):
    """The ``LogitsProcessorList`` that serves ``model`` with a decode-time fix in your own ``generate`` call::

        inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device)
        procs = mbias.decoding_processors(model, processor, inputs, "contrastive:alpha=1")
        out = model.generate(**inputs, logits_processor=procs, do_sample=False, max_new_tokens=20)

    - ``decode``: ``contrastive[:alpha=A,beta=B]`` or ``vcd[:alpha=A,beta=B,noise_step=T]`` (see the module doc).
    - ``inputs``: what you pass to ``generate`` (the processor's output, batched or not).
    - ``contrastive``: the contrast prompt is ``image_free_inputs`` when given (the processor's output for the same
      prompt built without the image, e.g. the chat template without the image entry: what ``mbias audit`` uses),
      else ``inputs`` with the image placeholder and image-wrapper tokens dropped from each row (left-padded).
    - ``vcd``: the contrast branch is ``inputs`` with ``pixel_values`` noised (seeded by ``seed``).

    Build a new list for each ``generate`` call (the processor holds that call's contrast cache).
    """
    import torch
    from transformers import LogitsProcessorList

    spec = parse_decode(decode)
    if spec is None:
        return LogitsProcessorList()
    inputs = dict(inputs)
    if "input_ids" not in inputs:
        raise MbiasError("decoding_processors needs the processor's inputs (with input_ids), as passed to generate")
    if spec.method == "vcd":
        if inputs.get("pixel_values") is None:
            raise MbiasError("vcd needs an image: the inputs have no pixel_values")
        branch = dict(inputs)
        branch["pixel_values"] = diffusion_noise(inputs["pixel_values"], spec.noise_step, seed)
    elif image_free_inputs is not None:
        branch = {k: v for k, v in dict(image_free_inputs).items() if torch.is_tensor(v)}
    else:
        branch = _drop_image_tokens(model, processor, inputs)
    return LogitsProcessorList([ContrastBranchLogitsProcessor(model, branch, spec)])


def _drop_image_tokens(model, processor, inputs: dict) -> dict:
    import torch

    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    drop = torch.isin(ids, torch.tensor(image_token_ids(model), device=ids.device))
    keep = (mask.bool() & ~drop)
    per_token = [k for k, v in inputs.items() if torch.is_tensor(v) and v.shape == ids.shape
                 and k not in ("input_ids", "attention_mask")]
    tok = getattr(processor, "tokenizer", processor)
    pad = getattr(tok, "pad_token_id", None)
    pad = 0 if pad is None else pad
    length = int(keep.sum(1).max())
    out = {"input_ids": ids.new_full((ids.shape[0], length), pad), "attention_mask": torch.zeros_like(
        ids[:, :length])}
    out.update({k: torch.zeros_like(inputs[k][:, :length]) for k in per_token})
    for b in range(ids.shape[0]):
        n = int(keep[b].sum())
        out["input_ids"][b, length - n:] = ids[b, keep[b]]
        out["attention_mask"][b, length - n:] = 1
        for k in per_token:
            out[k][b, length - n:] = inputs[k][b, keep[b]]
    return out


def describe(decode: str | DecodeSpec | None) -> dict | None:
    """summary.json's ``decode`` entry (None: plain decoding)."""
    spec = parse_decode(decode)
    return None if spec is None else spec.to_dict()


__all__ = ["METHODS", "FLOOR", "DecodeSpec", "parse_decode", "fuse_logits", "fused_logprobs", "diffusion_noise",
           "ContrastBranchLogitsProcessor", "PairedContrastLogitsProcessor", "decoding_processors", "describe",
           "image_token_ids"]
