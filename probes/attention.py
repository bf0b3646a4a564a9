"""attention: where the answer looks (correlational, not causal).

Per language-model layer, the attention mass (mean over heads and answer positions) from the positions that
predict the answer to the image tokens, and the same divided by the image tokens' share of the positions each
row can see: image tokens are often most of the sequence, so the raw share alone misleads (1.0 = attention in
proportion to token count).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mbias.display import fmt
from mbias.probes.base import PROBES, Measure, Plot, Probe, SampleContext, Series
from mbias.stats import bootstrap_mean


@dataclass
class AttentionConfig:
    pass


@PROBES.register("attention")
class AttentionProbe(Probe):
    config_class = AttentionConfig
    title = "Attention to image tokens"
    note = "Attention is correlational, not causal: it says where the model looks, not what it uses."
    measures = (Measure("image_attention_share", "attention on image tokens"),)
    plots = (Plot("attention_layers", "lines", lambda s, recs: [
        Series("raw share", list(range(len(s["per_layer"]))), s["per_layer"], side="vision"),
        Series("relative to token share", list(range(len(s["per_layer"]))), s["per_layer_normalised"])],
        xlabel="language-model layer", ylabel="attention to image tokens", ref=1.0),)
    summary_schema = {"type": "object", "required": ["image_attention_share"],
                      "properties": {"image_attention_share": {"$ref": "#/$defs/stat"}}}
    definition = ("Share of the answer positions' attention that lands on image tokens, per layer, raw and "
                  "relative to the image tokens' share of the sequence (correlational, not causal).")

    def run(self, ctx: SampleContext) -> dict:
        p = ctx.prepared
        att = ctx.scorer.attentions(p).mean(1)  # [layers, A, S], mean over heads
        n_rows = att.shape[1]
        P = p.prompt_ids.shape[0]
        visible = np.arange(P, P + n_rows)  # row t (predicting answer token t) sees keys 0 .. P-1+t
        img, q = p.image_positions, p.question_positions
        image_share = att[:, :, img].sum(-1).numpy()  # [layers, A]
        question_share = att[:, :, q].sum(-1).numpy()
        image_frac = len(img) / visible
        per_layer = image_share.mean(1)
        normalised = (image_share / image_frac[None, :]).mean(1)
        return {
            "image_attention_share": float(per_layer.mean()),
            "image_attention_share_normalised": float(normalised.mean()),
            "question_attention_share": float(question_share.mean()),
            "per_layer": [float(x) for x in per_layer],
            "per_layer_normalised": [float(x) for x in normalised],
            "image_token_fraction": float(image_frac.mean()),
        }

    def summarize(self, records: list[dict], groups: list[str]) -> dict:
        out = {k: bootstrap_mean([r[k] for r in records], groups) for k in (
            "image_attention_share", "image_attention_share_normalised", "question_attention_share")}
        out["per_layer"] = np.mean([r["per_layer"] for r in records], axis=0).tolist()
        out["per_layer_normalised"] = np.mean([r["per_layer_normalised"] for r in records], axis=0).tolist()
        out["image_token_fraction"] = float(np.mean([r["image_token_fraction"] for r in records]))
        return out

    @classmethod
    def report_rows(cls, summary: dict) -> list[tuple[str, str]]:
        return [("attention on image tokens", fmt(summary["image_attention_share"])),
                ("relative to their share of tokens (1 = proportional)",
                 fmt(summary["image_attention_share_normalised"])),
                ("attention on question tokens", fmt(summary["question_attention_share"])),
                ("image tokens' share of the sequence", fmt(summary["image_token_fraction"]))]

    def describe(self, scorer) -> dict:
        return {"players": "image tokens vs question tokens", "value_function": "eager attention weights, mean "
                "over heads and answer positions", "estimator": "direct", "budget": "1 forward pass per sample",
                "caveat": "correlational, not causal"}
