"""One scorer per architecture family: prompt wording and where each image token sits in the picture."""

from __future__ import annotations

import torch

from mbias.models import geometry
from mbias.models.base import Scorer


class LlavaScorer(Scorer):
    """LLaVA-1.5: one token per ViT patch, row-major, over the processor's centre crop."""

    family = "llava"
    model_types = ("llava",)

    def view_box(self, image):
        return geometry.crop_box(image.width, image.height, self.processor.image_processor)


class LlavaNextScorer(Scorer):
    """LLaVA-NeXT: a base view of the whole image, then AnyRes tiles (unpadded) with a newline token per row."""

    family = "llava_next"
    model_types = ("llava_next",)

    def token_coords(self, pixel_inputs, image, n_tokens):
        from transformers.models.llava_next.modeling_llava_next import (
            get_anyres_image_grid_shape,
            unpad_image,
        )

        cfg = self.model.config
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        base = geometry.grid_coords(side, side)
        size = pixel_inputs["image_sizes"][0].tolist()
        nph, npw = get_anyres_image_grid_shape(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
        canvas = torch.zeros(1, nph * side, npw * side)
        h, w = unpad_image(canvas, size).shape[1:]
        tiles = geometry.grid_coords(h, w).reshape(h, w, 2)
        # the newline embedding closes each row; it carries no image content, so it joins the row's last cell
        rows = torch.cat([tiles, tiles[:, -1:]], dim=1).reshape(-1, 2)
        coords = torch.cat([base, rows])
        return coords if coords.shape[0] == n_tokens else geometry.square_coords(n_tokens)


class Qwen2VLScorer(Scorer):
    """Qwen2-VL / Qwen2.5-VL: native-resolution patches, merged 2x2, row-major over the merged grid."""

    family = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")
    answer_separator = ""
    vision_modules = ("visual",)
    projector_modules = ("visual.merger",)  # the patch merger is Qwen's projector

    def token_coords(self, pixel_inputs, image, n_tokens):
        _, gh, gw = pixel_inputs["image_grid_thw"][0].tolist()
        merge = self.model.config.vision_config.spatial_merge_size
        return geometry.grid_coords(gh // merge, gw // merge)

    def prompt_positions(self, prepared, length):
        """M-RoPE's [3, length] positions (temporal, height, width), from the model's own ``get_rope_index``."""
        if not prepared.has_image:
            return super().prompt_positions(prepared, length)
        P = prepared.prompt_ids.shape[0]
        ids = torch.nn.functional.pad(prepared.prompt_ids, (0, length - P), value=0).unsqueeze(0)
        extras = {k: torch.nn.functional.pad(v, (0, length - P), value=0).unsqueeze(0)
                  for k, v in prepared.token_inputs.items()}
        rope = next(m for m in self.model.modules() if hasattr(m, "get_rope_index"))
        dev = self.device
        positions, _ = rope.get_rope_index(ids.to(dev), image_grid_thw=prepared.meta_inputs["image_grid_thw"].to(dev),
                                           attention_mask=torch.ones_like(ids).to(dev),
                                           **{k: v.to(dev) for k, v in extras.items()})
        return positions[:, 0]


class Idefics3Scorer(Scorer):
    """Idefics3 / SmolVLM: optional rows x cols tiles, then the global image; pixel-shuffled, row-major."""

    family = "idefics3"
    model_types = ("idefics3", "smolvlm")

    def token_coords(self, pixel_inputs, image, n_tokens):
        info = self.processor.image_processor(images=[image], return_tensors="pt", return_row_col_info=True)
        rows, cols = int(info["rows"][0][0]), int(info["cols"][0][0])
        per_tile = n_tokens // (rows * cols + 1) if rows and cols else n_tokens
        side = int(round(per_tile ** 0.5))
        glob = geometry.grid_coords(side, side)
        if not (rows and cols):
            return glob
        return torch.cat([geometry.tiled_coords(rows, cols, side, side), glob])


class PaliGemmaScorer(Scorer):
    """PaliGemma: image tokens, <bos>, prompt, newline; the answer is the suffix under prefix-LM attention."""

    family = "paligemma"
    model_types = ("paligemma",)
    answer_separator = ""
    # its prefix (image + prompt) attends both ways, so a causally computed prefix cache cannot stand for it; the
    # first-use check would not always see that either (on a tiny random model the two differ by under 1e-3)
    _prefix_ok = False

    def build_prompt(self, question, with_image):
        # PaliGemma has no chat template; mix checkpoints expect a task prefix such as "answer en ".
        return (self.config.prompt_template or "{question}").format(question=question)

    def process(self, prompt, image):
        if image is None:
            tok = self.processor.tokenizer
            enc = tok([tok.bos_token + prompt + "\n"], add_special_tokens=False, return_tensors="pt")
            enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])  # the prompt is prefix, as with an image
            return enc
        return self.processor(text=[self.processor.image_token + prompt], images=[image], return_tensors="pt")

    def encode_answer(self, prompt, answer):
        return torch.tensor(self.tokenizer(answer, add_special_tokens=False).input_ids, dtype=torch.long)


FAMILIES: tuple[type[Scorer], ...] = (
    LlavaScorer, LlavaNextScorer, Qwen2VLScorer, Idefics3Scorer, PaliGemmaScorer,
)


def scorer_class_for(model_type: str) -> type[Scorer] | None:
    for cls in FAMILIES:
        if model_type in cls.model_types:
            return cls
    return None


def supported_families() -> str:
    return ", ".join(f"{c.family} ({'/'.join(c.model_types)})" for c in FAMILIES)
