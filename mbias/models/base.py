"""The model adapter: one interface over HF image-text models, so probes and recipes never see architectures.

How scoring works, for every family: the vision tower runs once per example (``model.get_image_features``) and
its projected features are kept flat, one row per image placeholder token. A masked variant swaps some of those
rows for the baseline image's rows (feature-level masking) and some question token ids for a neutral id, then
goes through the model's own ``forward`` with ``mm_encoder_outputs`` in place of ``pixel_values``. The model
therefore does its own placeholder scatter, M-RoPE positions (Qwen2-VL) and prefix-LM mask (PaliGemma): the
adapter only needs to know how a family lays image tokens out in space and how it words a prompt.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import re
import string
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from mbias.errors import MbiasError
from mbias.example import Example
from mbias.models import geometry
from mbias.models.config import AdapterConfig

logger = logging.getLogger(__name__)

# Processor outputs that feed the vision tower rather than the language model.
_VISION_KEYS = ("pixel_values", "pixel_attention_mask", "image_sizes", "image_grid_thw")
# Per-image metadata the language-model forward needs too (M-RoPE needs the grid), repeated per batch row.
_FORWARD_META_KEYS = ("image_grid_thw",)


@dataclass
class Prepared:
    """One example, tokenized and encoded once; probes score many masked variants of it."""

    example: Example
    image: Any  # PIL image (RGB) or None for a text-only prompt
    prompt_ids: torch.Tensor  # [P]
    answer_ids: torch.Tensor  # [A] gold answer tokens, scored after the prompt
    token_inputs: dict[str, torch.Tensor]  # per-token extras over the prompt ([P] each)
    meta_inputs: dict[str, torch.Tensor]  # per-image extras for the forward pass
    pixel_inputs: dict[str, torch.Tensor]  # what the vision tower takes
    image_positions: torch.Tensor  # [N] sequence positions of image placeholder tokens
    question_positions: torch.Tensor  # [Q] positions of the user's question tokens (template text excluded)
    features: torch.Tensor | None  # [N, D] projected image features
    pooler_layout: tuple | None  # how to hand rows back to this family's forward
    token_groups: torch.Tensor  # [N] patch group of each image token
    view_box: tuple[float, float, float, float]
    choice_ids: list[torch.Tensor] | None
    question_tokens: list[str]
    baseline_features: dict[str, torch.Tensor] = field(default_factory=dict)
    baseline_images: dict[str, Any] = field(default_factory=dict)

    @property
    def has_image(self) -> bool:
        return self.features is not None

    @property
    def n_question(self) -> int:
        return int(self.question_positions.numel())

    @property
    def n_image_tokens(self) -> int:
        return int(self.image_positions.numel())


@dataclass
class Prediction:
    text: str
    correct: bool
    choice_scores: list[float] | None = None  # log p(choice) per choice, when the example has choices


def normalize_answer(text: str) -> str:
    """VQA-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


class ModelAdapter:
    """Base adapter; families override the few hooks marked below."""

    family: ClassVar[str] = "generic"
    model_types: ClassVar[tuple[str, ...]] = ()
    # What stands between the generation prompt and the answer text, as the model would emit it.
    answer_separator: ClassVar[str] = " "
    # Attribute names (on ``model.model``) of the parts, for parameter groups.
    vision_modules: ClassVar[tuple[str, ...]] = ("vision_tower", "vision_model", "visual")
    projector_modules: ClassVar[tuple[str, ...]] = ("multi_modal_projector", "connector")
    language_modules: ClassVar[tuple[str, ...]] = ("language_model", "text_model")

    def __init__(self, model, processor, *, model_id: str = "", config: AdapterConfig | None = None):
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.model_id = model_id
        self.config = config or AdapterConfig()
        self.image_token_id = self._image_token_id()

    # ----------------------------------------------------------------------------------------------------------
    # family hooks
    def build_prompt(self, question: str, with_image: bool) -> str:
        """The generation prompt through the processor's chat template."""
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        if not getattr(self.processor, "chat_template", None):
            raise MbiasError(
                f"the processor of {self.model_id or 'this model'} has no chat template; set one "
                "(processor.chat_template = ...) or use a checkpoint that ships chat_template.json"
            )
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def token_coords(self, prompt_inputs, image, n_tokens: int) -> torch.Tensor:
        """(y, x) centre in the view box of each image token, in placeholder order. Generic: a square raster."""
        return geometry.square_coords(n_tokens)

    def view_box(self, image) -> tuple[float, float, float, float]:
        return (0.0, 0.0, 1.0, 1.0)

    def process(self, prompt: str, image):
        """Run the processor on one prompt (and image); returns a BatchFeature with batch size 1."""
        images = [image] if image is not None else None
        return self.processor(text=[prompt], images=images, return_tensors="pt")

    # ----------------------------------------------------------------------------------------------------------
    # preparing an example
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _image_token_id(self) -> int:
        cfg = self.model.config
        for name in ("image_token_id", "image_token_index"):
            value = getattr(cfg, name, None)
            if value is not None:
                return int(value)
        raise MbiasError(f"{self.model_id}: the model config names no image token (image_token_id)")

    def encode_answer(self, prompt: str, answer: str) -> torch.Tensor:
        """Answer token ids as the model would produce them right after ``prompt`` (context-aware split)."""
        tok = self.tokenizer
        cont = self.answer_separator + answer
        full = tok(prompt + cont, add_special_tokens=False).input_ids
        head = tok(prompt, add_special_tokens=False).input_ids
        if full[: len(head)] == head and len(full) > len(head):
            ids = full[len(head):]
        else:  # the boundary merged; fall back to the continuation on its own
            ids = tok(cont, add_special_tokens=False).input_ids
        if not ids:
            raise MbiasError(f"answer {answer!r} encodes to no tokens")
        return torch.tensor(ids, dtype=torch.long)

    def prepare(self, example: Example, *, with_image: bool = True) -> Prepared:
        """Tokenize, locate image/question tokens, encode the answer(s) and compute image features once."""
        image = example.load_image() if with_image else None
        prompt = self.build_prompt(example.question, with_image)
        inputs = self.process(prompt, image)
        ids = inputs["input_ids"][0]
        seq_len = ids.shape[0]
        token_inputs = {k: v[0] for k, v in inputs.items()
                        if k not in ("input_ids", "attention_mask", "labels") + _VISION_KEYS
                        and torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == seq_len}
        meta_inputs = {k: inputs[k] for k in _FORWARD_META_KEYS if k in inputs}
        pixel_inputs = {k: inputs[k] for k in _VISION_KEYS if k in inputs}
        image_positions = (ids == self.image_token_id).nonzero().flatten()
        question_positions = self._question_positions(prompt, example.question, ids)
        answer_ids = self.encode_answer(prompt, example.answer)
        choice_ids = [self.encode_answer(prompt, c) for c in example.choices] if example.choices else None

        features = layout = None
        groups = torch.zeros(0, dtype=torch.long)
        box = (0.0, 0.0, 1.0, 1.0)
        if with_image:
            features, layout = self._encode_images(pixel_inputs)
            if features.shape[1] != image_positions.numel():
                raise MbiasError(
                    f"{self.model_id}: {image_positions.numel()} image tokens in the prompt but the vision tower "
                    f"gave {features.shape[1]} features; the processor and model configs disagree"
                )
            features = features[0]
            box = self.view_box(image)
            coords = self.token_coords(inputs, image, features.shape[0])
            groups = geometry.token_groups(coords, self.config.patch_grid)
        q_tokens = self.tokenizer.convert_ids_to_tokens(ids[question_positions].tolist())
        return Prepared(
            example=example, image=image, prompt_ids=ids, answer_ids=answer_ids, token_inputs=token_inputs,
            meta_inputs=meta_inputs, pixel_inputs=pixel_inputs, image_positions=image_positions,
            question_positions=question_positions, features=features, pooler_layout=layout, token_groups=groups,
            view_box=box, choice_ids=choice_ids, question_tokens=[self._clean_token(t) for t in q_tokens],
        )

    def _clean_token(self, token: str) -> str:
        return self.tokenizer.convert_tokens_to_string([token]) if token else token

    def _question_positions(self, prompt: str, question: str, ids: torch.Tensor) -> torch.Tensor:
        """Positions of the question's tokens in the processed ids.

        The tokenizer alone gives character offsets on the unexpanded prompt; the processor's ids differ only
        where it expanded image placeholders, so aligning the two id lists maps question tokens across.
        """
        start = prompt.rfind(question)
        if start < 0:
            raise MbiasError("the chat template changed the question text; cannot locate question tokens")
        end = start + len(question)
        enc = self.tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        unexpanded, offsets = enc["input_ids"], enc["offset_mapping"]
        in_question = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
        processed = ids.tolist()
        matcher = difflib.SequenceMatcher(a=unexpanded, b=processed, autojunk=False)
        mapping = {}
        for block in matcher.get_matching_blocks():
            for k in range(block.size):
                mapping[block.a + k] = block.b + k
        positions = sorted(mapping[i] for i in in_question if i in mapping)
        if len(positions) != len(in_question):
            logger.warning("%d of %d question tokens could not be located", len(in_question) - len(positions),
                           len(in_question))
        return torch.tensor(positions, dtype=torch.long)

    # ----------------------------------------------------------------------------------------------------------
    # image features
    @torch.no_grad()
    def _encode_images(self, pixel_inputs: dict) -> tuple[torch.Tensor, tuple]:
        """[n_images, N, D] projected features and the pooler layout needed to hand them back."""
        dev = self.device
        kwargs = {k: v.to(dev) for k, v in pixel_inputs.items()}
        if "pixel_values" in kwargs and kwargs["pixel_values"].is_floating_point():
            kwargs["pixel_values"] = kwargs["pixel_values"].to(self.model.dtype)
        out = self.model.get_image_features(**kwargs, return_dict=True)
        pooled = out.pooler_output
        if isinstance(pooled, (list, tuple)):
            rows = [p.reshape(-1, p.shape[-1]) for p in pooled]
            n_images = len(rows)
            per_image = rows[0].shape[0]
            if any(r.shape[0] != per_image for r in rows):
                raise MbiasError("images of one batch gave different token counts; resize them to one size")
            return torch.stack(rows), ("list", type(pooled))
        # a tensor [n_images * n_sub, n, D]
        n_images = pixel_inputs["pixel_values"].shape[0]
        sub_shape = tuple(pooled.shape[1:])
        return pooled.reshape(n_images, -1, pooled.shape[-1]), ("tensor", sub_shape)

    def _pack(self, rows: torch.Tensor, layout: tuple):
        """Inverse of the flattening in ``_encode_images`` for a batch of variants ``rows`` [B, N, D]."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        kind, info = layout
        if kind == "list":
            pooled = info(r for r in rows)
        else:
            pooled = rows.reshape(-1, *info)
        return {"image": BaseModelOutputWithPooling(pooler_output=pooled)}

    def image_features_for(self, images: list) -> torch.Tensor:
        """[len(images), N, D] features of PIL images processed exactly like the example's image."""
        pix = self.processor.image_processor(images=images, return_tensors="pt")
        pixel_inputs = {k: pix[k] for k in _VISION_KEYS if k in pix}
        feats, _ = self._encode_images(pixel_inputs)
        return feats

    def baseline_image(self, prepared: Prepared, kind: str, swap_image=None):
        """The whole-image baseline of ``kind`` at the example image's size."""
        from PIL import Image

        img = prepared.image
        if kind in prepared.baseline_images:
            return prepared.baseline_images[kind]
        arr = np.asarray(img, dtype=np.float32)
        if kind == "blank":
            out = np.broadcast_to(arr.reshape(-1, 3).mean(0), arr.shape)
        elif kind == "black":
            out = np.zeros_like(arr)
        elif kind == "noise":
            seed = int(hashlib.sha256(f"{self.config.noise_seed}:{prepared.example.id}".encode()).hexdigest()[:8], 16)
            rng = np.random.default_rng(seed)
            out = np.clip(0.5 + self.config.noise_std * rng.standard_normal(arr.shape), 0, 1) * 255
        elif kind == "swap":
            if swap_image is None:
                raise MbiasError("the swap baseline needs another example's image (swap_image=...)")
            out = np.asarray(swap_image.convert("RGB").resize(img.size), dtype=np.float32)
        else:
            raise MbiasError(f"unknown image baseline {kind!r}")
        result = Image.fromarray(np.ascontiguousarray(out).round().clip(0, 255).astype(np.uint8))
        prepared.baseline_images[kind] = result
        return result

    def baseline(self, prepared: Prepared, kind: str | None = None, swap_image=None) -> torch.Tensor:
        """[N, D] features of the whole-image baseline (computed once per example and kind)."""
        kind = kind or self.config.image_baseline
        if kind not in prepared.baseline_features:
            image = self.baseline_image(prepared, kind, swap_image)
            prepared.baseline_features[kind] = self.image_features_for([image])[0]
        return prepared.baseline_features[kind]

    def text_baseline_id(self) -> int:
        tok = self.tokenizer
        kind = self.config.text_baseline
        if kind == "pad":
            tid = tok.pad_token_id if tok.pad_token_id is not None else tok.unk_token_id
        elif kind == "unk":
            tid = tok.unk_token_id
        else:
            tid = tok(" ", add_special_tokens=False).input_ids[-1]
        if tid is None:
            raise MbiasError(f"the tokenizer has no {kind} token; choose another text_baseline")
        return int(tid)

    # ----------------------------------------------------------------------------------------------------------
    # scoring
    def variant_inputs(self, prepared: Prepared, image_keep: torch.Tensor | None, text_keep: torch.Tensor | None,
                       *, baseline: str | None = None, swap_image=None):
        """Prompt ids [V, P] and image feature rows [V, N, D] (or None) for keep-masks over groups and tokens."""
        if image_keep is None and text_keep is None:
            image_keep = torch.ones(1, self.config.patch_grid ** 2, dtype=torch.bool)
        n_var = (image_keep if image_keep is not None else text_keep).shape[0]
        ids = prepared.prompt_ids.unsqueeze(0).repeat(n_var, 1)
        if text_keep is not None and prepared.n_question:
            tk = text_keep.to(torch.bool).cpu()
            q = prepared.question_positions
            ids[:, q] = torch.where(tk, ids[:, q], torch.full_like(ids[:, q], self.text_baseline_id()))
        if not prepared.has_image:
            return ids, None
        if image_keep is None:
            image_keep = torch.ones(n_var, self.config.patch_grid ** 2, dtype=torch.bool)
        ik = image_keep.to(torch.bool).cpu()
        if bool(ik.all()):
            return ids, prepared.features.unsqueeze(0).expand(n_var, -1, -1)
        kind = baseline or self.config.image_baseline
        if self.config.masking == "pixel":
            return ids, self._pixel_masked_features(prepared, ik, kind, swap_image)
        base = self.baseline(prepared, kind, swap_image)
        token_keep = ik[:, prepared.token_groups].to(prepared.features.device).unsqueeze(-1)  # [V, N, 1]
        return ids, torch.where(token_keep, prepared.features.unsqueeze(0), base.unsqueeze(0))

    def _pixel_masked_features(self, prepared, ik, kind, swap_image):
        base_img = self.baseline_image(prepared, kind, swap_image)
        rows = [None] * ik.shape[0]
        todo = []
        for v in range(ik.shape[0]):
            if bool(ik[v].all()):
                rows[v] = prepared.features
            else:
                masked = (~ik[v]).nonzero().flatten().numpy()
                todo.append((v, geometry.paint_groups(prepared.image, base_img, masked, self.config.patch_grid,
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
              baseline: str | None = None, swap_image=None) -> torch.Tensor:
        """Teacher-forced log p(answer | variant), summed over answer tokens.

        ``image_keep`` [V, G] keeps (True) or masks each patch group; ``text_keep`` [V, Q] each question token.
        Returns [V] for the gold answer, or [V, C] when ``answers`` (a list of token-id tensors) is given.
        """
        ids, feats = self.variant_inputs(prepared, image_keep, text_keep, baseline=baseline, swap_image=swap_image)
        return self.score_inputs(prepared, ids, feats, answers=answers)

    def score_inputs(self, prepared: Prepared, ids: torch.Tensor, feats: torch.Tensor | None, *,
                     answers: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Scores for explicit prompt ids [V, P] and feature rows [V, N, D]; see ``score``."""
        single = answers is None
        answers = [prepared.answer_ids] if single else answers
        n_var, n_ans = ids.shape[0], len(answers)
        rows = [(v, c) for v in range(n_var) for c in range(n_ans)]
        out = torch.empty(len(rows), dtype=torch.float32)
        done = 0
        bs = self.config.batch_size
        while done < len(rows):
            chunk = rows[done:done + bs]
            try:
                out[done:done + len(chunk)] = self._score_rows(prepared, ids, feats, answers, chunk)
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
        out = out.view(n_var, n_ans)
        return out[:, 0] if single else out

    def _score_rows(self, prepared, ids, feats, answers, rows) -> torch.Tensor:
        dev = self.device
        P = prepared.prompt_ids.shape[0]
        max_a = max(int(answers[c].numel()) for _, c in rows)
        L = P + max_a
        B = len(rows)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((B, L), pad_id, dtype=torch.long)
        attn = torch.zeros((B, L), dtype=torch.long)
        for b, (v, c) in enumerate(rows):
            a = answers[c]
            input_ids[b, :P] = ids[v]
            input_ids[b, P:P + a.numel()] = a
            attn[b, :P + a.numel()] = 1
        kwargs = {"input_ids": input_ids.to(dev), "attention_mask": attn.to(dev)}
        for k, v in prepared.token_inputs.items():
            ext = torch.full((B, L), self._answer_fill(k), dtype=v.dtype)
            ext[:, :P] = v
            kwargs[k] = ext.to(dev)
        if feats is not None:
            sel = feats[[v for v, _ in rows]].to(dev, self.model.dtype)
            kwargs["mm_encoder_outputs"] = self._pack(sel, prepared.pooler_layout)
            for k, v in prepared.meta_inputs.items():
                kwargs[k] = v.repeat(B, *([1] * (v.dim() - 1))).to(dev)
        logits = self.model(**kwargs, use_cache=False, logits_to_keep=max_a + 1).logits  # [B, max_a+1, vocab]
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # position t predicts answer token t
        scores = torch.empty(B, dtype=torch.float32)
        for b, (_, c) in enumerate(rows):
            a = answers[c].to(dev)
            scores[b] = logp[b, torch.arange(a.numel(), device=dev), a].sum().cpu()
        return scores

    def _answer_fill(self, key: str) -> int:
        """Value of a per-token extra over answer positions (PaliGemma marks the suffix with token_type 1)."""
        return 1 if key == "token_type_ids" else 0

    # ----------------------------------------------------------------------------------------------------------
    # answers, generation, attention
    @torch.no_grad()
    def predict(self, prepared: Prepared, image_keep=None, text_keep=None, *, baseline=None,
                swap_image=None) -> Prediction:
        """The model's answer under a (masked) input: argmax over choices, else greedy generation."""
        ids, feats = self.variant_inputs(prepared, image_keep, text_keep, baseline=baseline, swap_image=swap_image)
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
        self.model.set_attn_implementation("eager")
        try:
            ids, feats = self.variant_inputs(prepared, None, None)
            dev = self.device
            P, A = prepared.prompt_ids.shape[0], prepared.answer_ids.numel()
            full = torch.cat([ids[0], prepared.answer_ids]).unsqueeze(0)
            kwargs = {"input_ids": full.to(dev), "attention_mask": torch.ones_like(full).to(dev)}
            for k, v in prepared.token_inputs.items():
                ext = torch.full((1, P + A), self._answer_fill(k), dtype=v.dtype)
                ext[0, :P] = v
                kwargs[k] = ext.to(dev)
            if feats is not None:
                kwargs["mm_encoder_outputs"] = self._pack(feats.to(dev, self.model.dtype), prepared.pooler_layout)
                kwargs.update({k: v.to(dev) for k, v in prepared.meta_inputs.items()})
            out = self.model(**kwargs, use_cache=False, output_attentions=True, logits_to_keep=1)
            # rows P-1 .. P+A-2 predict the answer tokens
            return torch.stack([a[0, :, P - 1:P + A - 1, :].float().cpu() for a in out.attentions])
        finally:
            self.model.set_attn_implementation(previous)

    # ----------------------------------------------------------------------------------------------------------
    # parameter groups
    def _parts(self, names: tuple[str, ...]) -> list[torch.nn.Module]:
        """Submodules of ``model.model`` at the given (possibly dotted) attribute paths, where present."""
        inner = getattr(self.model, "model", self.model)
        found = []
        for name in names:
            obj = inner
            for attr in name.split("."):
                obj = getattr(obj, attr, None)
            if isinstance(obj, torch.nn.Module):
                found.append(obj)
        return found

    def parameter_groups(self, model: torch.nn.Module | None = None) -> dict[str, list[str]]:
        """Qualified parameter names of ``model`` (default: ours, possibly PEFT-wrapped) by modality side.

        ``vision`` = vision tower + projector, ``language`` = language model + lm head. Parameters are matched by
        identity, so PEFT's renamed paths and LoRA weights injected inside these parts land in the right group.
        """
        model = model or self.model
        owner = {}
        for group, names in (("vision", self.vision_modules + self.projector_modules),
                             ("language", self.language_modules)):
            for part in self._parts(names):
                for p in part.parameters():
                    owner[id(p)] = group
        groups: dict[str, list[str]] = {"vision": [], "language": [], "other": []}
        for name, p in model.named_parameters():
            g = owner.get(id(p))
            if g is None and "lm_head" in name:
                g = "language"
            elif g is None and "image_newline" in name:  # LLaVA-NeXT's learned row separator
                g = "vision"
            groups[g or "other"].append(name)
        return groups

    def module_names(self, side: str) -> list[str]:
        """Qualified names of the Linear layers on one side (``vision``, ``projector``, ``language``)."""
        names = {"vision": self.vision_modules, "projector": self.projector_modules,
                 "language": self.language_modules}[side]
        parts = {id(m) for m in self._parts(names)}
        out = []
        for qual, mod in self.model.named_modules():
            if id(mod) in parts:
                out.extend(f"{qual}.{sub}" if sub else qual for sub, m in mod.named_modules()
                           if isinstance(m, torch.nn.Linear))
        return out
