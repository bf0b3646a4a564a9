"""The model scorer: one interface over HF image-text models, so probes and recipes never see architectures.

How scoring works, for every family: the vision tower runs once per example (``model.get_image_features``) and
its projected features are kept flat, one row per image placeholder token. A masked variant swaps some of those
rows for the baseline image's rows (feature-level masking) and some question token ids for a neutral id, then
goes through the model's own ``forward`` with ``mm_encoder_outputs`` in place of ``pixel_values``. The model
therefore does its own placeholder scatter, M-RoPE positions (Qwen2-VL) and prefix-LM mask (PaliGemma): the
scorer only needs to know how a family lays image tokens out in space and how it words a prompt.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
from typing import ClassVar

import numpy as np
import torch

from mbias.errors import MbiasError
from mbias.example import Example
from mbias.models import geometry
from mbias.models.config import ScoringConfig
from mbias.models.scoring import ScoringMixin
from mbias.models.types import Encoded, Prepared

logger = logging.getLogger(__name__)

# Per-image metadata the language-model forward needs too (M-RoPE needs the grid), repeated per batch row.
_FORWARD_META_KEYS = ("image_grid_thw",)


class Scorer(ScoringMixin):
    """Base scorer; families override the few hooks marked below."""

    family: ClassVar[str] = "generic"
    model_types: ClassVar[tuple[str, ...]] = ()
    # processor outputs that feed the vision tower rather than the language model (the fine-tune collator swaps
    # them for the baseline image's); a family whose processor returns others adds them
    vision_keys: ClassVar[tuple[str, ...]] = ("pixel_values", "pixel_attention_mask", "image_sizes", "image_grid_thw")
    # What stands between the generation prompt and the answer text, as the model would emit it.
    answer_separator: ClassVar[str] = " "
    # Attribute names (on ``model.model``) of the parts, for parameter groups.
    vision_modules: ClassVar[tuple[str, ...]] = ("vision_tower", "vision_model", "visual")
    projector_modules: ClassVar[tuple[str, ...]] = ("multi_modal_projector", "connector")
    language_modules: ClassVar[tuple[str, ...]] = ("language_model", "text_model")

    def __init__(self, model, processor, *, model_id: str = "", config: ScoringConfig | None = None):
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.model_id = model_id
        self.config = config or ScoringConfig()
        self.image_token_id = self._image_token_id()
        self._text_cache: dict = {}

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

    def token_coords(self, pixel_inputs, image, n_tokens: int) -> torch.Tensor:
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
        """Where inputs go. A model split by a device map has offloaded weights on the meta device; accelerate's
        hooks run every layer on its map's main device (the first GPU in the map, else the CPU) and move
        activations between devices, so inputs go there."""
        placed = getattr(self.model, "hf_device_map", None)
        if placed:
            gpus = [d for d in placed.values() if d not in ("cpu", "disk")]
            return torch.device(gpus[0] if gpus else "cpu")
        return next(self.model.parameters()).device

    def _image_token_id(self) -> int:
        value = image_token_id(self.model.config)
        if value is None:
            raise MbiasError(f"{self.model_id}: the model config names no image token (image_token_id)")
        return value

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

    def encode(self, example: Example, *, with_image: bool = True) -> Encoded:
        """Tokenize: prompt through the chat template, image and question token positions, answer ids."""
        image = example.load_image() if with_image else None
        prompt = self.build_prompt(example.question, with_image)
        text = self._prompt_encoding(prompt, example.question, image)
        pixel_inputs = {}
        if image is not None:
            pix = self.processor.image_processor(images=[image], return_tensors="pt")
            pixel_inputs = {k: pix[k] for k in self.vision_keys if k in pix}
        return Encoded(
            example=example, image=image, answer_ids=self._answer_ids(prompt, example.answer),
            pixel_inputs=pixel_inputs,
            choice_ids=[self._answer_ids(prompt, c) for c in example.choices] if example.choices else None,
            **text,
        )

    def _prompt_encoding(self, prompt: str, question: str, image) -> dict:
        """The text half of an encoding. It depends on the image only through its size (how many placeholder
        tokens the processor expands), so it is cached per (prompt, size): datasets repeat their phrasings."""
        key = ("prompt", prompt, None if image is None else image.size)
        if key not in self._text_cache:
            inputs = self.process(prompt, image)
            ids = inputs["input_ids"][0]
            seq_len = ids.shape[0]
            question_positions = self._question_positions(prompt, question, ids)
            q_tokens = self.tokenizer.convert_ids_to_tokens(ids[question_positions].tolist())
            self._text_cache[key] = dict(
                prompt_ids=ids,
                token_inputs={k: v[0] for k, v in inputs.items()
                              if k not in ("input_ids", "attention_mask", "labels") + self.vision_keys
                              and torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == seq_len},
                meta_inputs={k: inputs[k] for k in _FORWARD_META_KEYS if k in inputs},
                image_positions=(ids == self.image_token_id).nonzero().flatten(),
                question_positions=question_positions,
                question_tokens=[self._clean_token(t) for t in q_tokens],
            )
        return self._text_cache[key]

    def _answer_ids(self, prompt: str, answer: str) -> torch.Tensor:
        key = (prompt, answer)
        if key not in self._text_cache:
            self._text_cache[key] = self.encode_answer(prompt, answer)
        return self._text_cache[key]

    def prepare(self, example: Example | Encoded, *, with_image: bool = True) -> Prepared:
        """Encode (unless given an ``Encoded``) and compute the image features once."""
        enc = example if isinstance(example, Encoded) else self.encode(example, with_image=with_image)
        prepared = Prepared(**{f.name: getattr(enc, f.name) for f in dataclasses.fields(Encoded)})
        if enc.image is None:
            return prepared
        features, layout = self._encode_images(enc.pixel_inputs)
        if features.shape[1] != enc.n_image_tokens:
            raise MbiasError(
                f"{self.model_id}: {enc.n_image_tokens} image tokens in the prompt but the vision tower "
                f"gave {features.shape[1]} features; the processor and model configs disagree"
            )
        prepared.features, prepared.pooler_layout = features[0], layout
        prepared.view_box = self.view_box(enc.image)
        prepared.token_coords = self.token_coords(enc.pixel_inputs, enc.image, enc.n_image_tokens)
        return prepared

    def patch_groups(self, prepared: Prepared, grid: int | None = None) -> geometry.PatchGroups:
        """The image players of ``prepared`` for a ``grid x grid`` partition (default: the config's)."""
        grid = grid or self.config.patch_grid
        pixel = self.config.masking == "pixel"  # every cell is a player: painting it changes the picture
        if (grid, pixel) not in prepared.group_cache:
            prepared.group_cache[(grid, pixel)] = geometry.patch_groups(prepared.token_coords, grid, all_cells=pixel)
        return prepared.group_cache[(grid, pixel)]

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
        pixel_inputs = {k: pix[k] for k in self.vision_keys if k in pix}
        feats, _ = self._encode_images(pixel_inputs)
        return feats

    def baseline_image(self, prepared: Encoded, kind: str, swap_image=None):
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
        elif kind == "crop":  # mDPO's corrupted image: a random 0-20% of the area, resized back
            seed = int(hashlib.sha256(f"{self.config.noise_seed}:crop:{prepared.example.id}".encode()).hexdigest()[:8], 16)
            rng = np.random.default_rng(seed)
            h, w = arr.shape[:2]
            side = max(1.0, float(np.sqrt(rng.uniform(0.0, 0.2))) * min(h, w))
            top, left = rng.uniform(0, h - side), rng.uniform(0, w - side)
            box = tuple(round(v) for v in (left, top, left + side, top + side))
            out = np.asarray(img.crop(box).resize(img.size, Image.BILINEAR), dtype=np.float32)
        elif kind == "swap":
            if swap_image is None:
                raise MbiasError("the swap baseline needs another example's image (swap_image=...)")
            out = np.asarray(swap_image.convert("RGB").resize(img.size), dtype=np.float32)
        else:
            raise MbiasError(f"unknown image baseline {kind!r}")
        result = Image.fromarray(np.ascontiguousarray(out).round().clip(0, 255).astype(np.uint8))
        prepared.baseline_images[kind] = result
        return result

    def baseline_pixels(self, encoded: Encoded, kind: str) -> dict[str, torch.Tensor]:
        """Vision inputs of the whole-image baseline (cached on the example), for training-time passes."""
        if kind not in encoded.baseline_pixel_inputs:
            pix = self.processor.image_processor(images=[self.baseline_image(encoded, kind)], return_tensors="pt")
            encoded.baseline_pixel_inputs[kind] = {k: pix[k] for k in self.vision_keys if k in pix}
        return encoded.baseline_pixel_inputs[kind]

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


def image_token_id(config) -> int | None:
    """The id of the image placeholder token in a model's config (its name differs between families)."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None
