"""A late-fusion LLaVA: the control arm of ``imbalance_late_fusion.py``, where the seed papers' premise holds most directly.

Image and question meet only in the answer's logits, as in the models the seed recipes were built for (one
encoder per modality, a linear fusion head): the LLM reads the prompt with the image tokens taken out (the text
side), and the ViT and projector's features, flattened so that position survives, go through an MLP head to
vocabulary logits (the image side), added where the first answer token is predicted. The head sits inside the
projector (``late_head``), so mbias's parameter groups put it on the vision side with the ViT and projector.

It loads as remote code: ``imbalance_late_fusion.py`` copies this file into each base model's folder, whose
config.json maps ``AutoModelForImageTextToText`` to ``LateFusionLlava``; load it with ``trust_remote_code=True``
(``mbias finetune --trust-remote-code``). Everything the recipes and the audit's scorer call works as on the LLaVA
it extends: ``logits_to_keep`` as a boolean mask or a count, precomputed ``mm_encoder_outputs``, and
``output_hidden_states`` (full-length, with the projector's features at the image-token positions, which is what
cggm's image head pools). With a count, the first kept position is taken to predict the first answer token (as in
mbias's scorer); generation recomputes the whole sequence at each token.
"""

from __future__ import annotations

import torch
from transformers import LlavaForConditionalGeneration
from transformers.models.llava.modeling_llava import LlavaCausalLMOutputWithPast

from mbias.finetune.data import first_of_row


class LateFusionLlava(LlavaForConditionalGeneration):
    def __init__(self, config):
        super().__init__(config)
        vision, d = config.vision_config, config.text_config.hidden_size
        patches = (vision.image_size // vision.patch_size) ** 2
        self.model.multi_modal_projector.late_head = torch.nn.Sequential(
            torch.nn.Linear(patches * d, d), torch.nn.GELU(), torch.nn.Linear(d, config.text_config.vocab_size))
        self.post_init()

    def _image_features(self, pixel_values, mm_encoder_outputs, batch: int):
        """[B, N, D] projector features of each row's image, or None without an image."""
        if mm_encoder_outputs and mm_encoder_outputs.get("image") is not None:
            pooled = mm_encoder_outputs["image"].pooler_output
        elif pixel_values is not None:
            pooled = self.model.get_image_features(
                pixel_values=pixel_values, vision_feature_layer=self.config.vision_feature_layer,
                vision_feature_select_strategy=self.config.vision_feature_select_strategy,
                return_dict=True).pooler_output
        else:
            return None
        return torch.cat(list(pooled), 0).reshape(batch, -1, self.config.text_config.hidden_size)

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, logits_to_keep=0,
                mm_encoder_outputs=None, output_hidden_states=None, **kwargs):
        batch, length = input_ids.shape
        text = input_ids != self.config.image_token_id
        n_text = text.sum(1)
        if (n_text != n_text[0]).any():
            raise ValueError("LateFusionLlava needs the same number of image tokens in every row")
        ids = input_ids[text].view(batch, -1)
        mask = None if attention_mask is None else attention_mask[text].view(batch, -1)
        out = self.model.language_model(input_ids=ids, attention_mask=mask, use_cache=False,
                                        output_hidden_states=output_hidden_states)
        hidden = out.last_hidden_state
        feats = self._image_features(pixel_values, mm_encoder_outputs, batch)
        image_logits = None if feats is None else self.model.multi_modal_projector.late_head(feats.flatten(1))

        if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dtype == torch.bool:
            keep = logits_to_keep[text].view(batch, -1)
            logits = self.lm_head(hidden[keep])  # [T, vocab], row-major
            if image_logits is not None:
                rows = keep.nonzero()[:, 0]
                at = first_of_row(rows).nonzero()[:, 0]
                logits = logits.index_add(0, at, image_logits[rows[at]].to(logits.dtype))
        else:
            k = int(logits_to_keep)
            logits = self.lm_head(hidden[:, -k:] if k > 0 else hidden)
            if image_logits is not None:
                add = image_logits[:, None].to(logits.dtype)
                logits = torch.cat([logits[:, :1] + add, logits[:, 1:]], 1) if k > 0 else logits + add

        states = None
        if output_hidden_states:
            def full(h):
                out_h = h.new_zeros(batch, length, h.shape[-1]).masked_scatter(text[..., None], h)
                return out_h if feats is None else out_h.masked_scatter(~text[..., None], feats.to(h.dtype))
            states = tuple(full(h) for h in out.hidden_states)
        return LlavaCausalLMOutputWithPast(logits=logits, hidden_states=states)
