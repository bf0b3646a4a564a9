"""Report figures from summary.json and results.jsonl (matplotlib, no torch). Each returns PNG bytes or None."""

from __future__ import annotations

import base64
import io

import numpy as np

LANG, VIS, GREY = "#c8553d", "#2f6690", "#8d99ae"


def _fig(w=6.4, h=3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(w, h), dpi=110)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def share_distribution(records: list[dict]) -> bytes | None:
    shares = [r["probes"]["modality_shapley"]["language_share"] for r in records
              if "modality_shapley" in r["probes"] and r["probes"]["modality_shapley"]["language_share"] is not None]
    tshap = [r["probes"]["mm_shap"]["t_shap"] for r in records
             if "mm_shap" in r["probes"] and r["probes"]["mm_shap"]["t_shap"] is not None]
    if not shares and not tshap:
        return None
    fig, ax = _fig()
    bins = np.linspace(0, 1, 21)
    if shares:
        ax.hist(shares, bins=bins, alpha=0.75, color=LANG, label="language share (modality Shapley)")
    if tshap:
        ax.hist(tshap, bins=bins, alpha=0.55, color=VIS, label="T-SHAP (MM-SHAP)")
    ax.axvline(0.5, color="black", lw=0.8, ls="--")
    ax.set_xlabel("share of the answer attributed to the question text (0 = all image, 1 = all text)")
    ax.set_ylabel("samples")
    ax.legend(frameon=False, fontsize=8)
    return _png(fig)


def _error_bars(means: list[float], intervals: list) -> list[list[float]]:
    """matplotlib's [below, above] distances from each mean to its 95% interval."""
    return [[m - ci[0] for m, ci in zip(means, intervals, strict=True)],
            [ci[1] - m for m, ci in zip(means, intervals, strict=True)]]


def per_category(summary: dict) -> bytes | None:
    cats = summary.get("per_category") or {}
    rows = [(c, v) for c, v in cats.items() if "language_share" in v and v["language_share"]["mean"] is not None]
    if not rows:
        return None
    fig, ax = _fig(6.4, 0.45 * len(rows) + 1.2)
    y = np.arange(len(rows))
    means = [v["language_share"]["mean"] for _, v in rows]
    ax.barh(y, means, xerr=_error_bars(means, [v["language_share"]["ci95"] for _, v in rows]), color=LANG,
            alpha=0.8, capsize=3)
    ax.set_yticks(y, [f"{c} (n={v['n']})" for c, v in rows])
    ax.axvline(0.5, color="black", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_xlabel("language share, 95% interval")
    return _png(fig)


def ablation(summary: dict) -> bytes | None:
    ab = summary["probes"].get("ablation")
    if not ab:
        return None
    names = list(ab["accuracy"])
    means = [ab["accuracy"][n] for n in names]
    ci = [ab["accuracy_ci95"][n] for n in names]
    fig, ax = _fig(6.4, 2.8)
    x = np.arange(len(names))
    colors = [GREY if n == "full" else (VIS if "image" in n else LANG) for n in names]
    ax.bar(x, means, yerr=_error_bars(means, ci), color=colors, capsize=3)
    ax.set_xticks(x, [n.replace("_", " ") for n in names], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    return _png(fig)


def degradation(summary: dict) -> bytes | None:
    deg = summary["probes"].get("degradation")
    if not deg:
        return None
    fig, ax = _fig()
    for modality, color in (("image", VIS), ("text", LANG)):
        if modality not in deg:
            continue
        d = deg[modality]
        rates, acc = np.array(d["rates"]), np.array(d["accuracy"])
        ci = np.array(d["accuracy_ci95"], dtype=float)
        ax.plot(rates, acc, marker="o", color=color, label=f"{modality} missing (AUC {d['auc']:.2f})")
        ax.fill_between(rates, ci[:, 0], ci[:, 1], color=color, alpha=0.15)
    ax.set_xlabel("missing rate")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(frameon=False, fontsize=8)
    return _png(fig)


def attention_layers(summary: dict) -> bytes | None:
    att = summary["probes"].get("attention")
    if not att:
        return None
    fig, ax = _fig(6.4, 2.8)
    layers = np.arange(len(att["per_layer"]))
    ax.plot(layers, att["per_layer"], marker="o", color=VIS, label="raw share")
    ax.plot(layers, att["per_layer_normalised"], marker="s", color=GREY, label="relative to token share")
    ax.axhline(1.0, color="black", lw=0.6, ls=":")
    ax.set_xticks(layers)
    ax.set_xlabel("language-model layer")
    ax.set_ylabel("attention to image tokens")
    ax.legend(frameon=False, fontsize=8)
    return _png(fig)


def pdm_steps(summary: dict) -> bytes | None:
    pdm = summary["probes"].get("pdm")
    if not pdm or not pdm.get("hellinger_by_step"):
        return None
    fig, ax = _fig(6.4, 2.6)
    steps = np.arange(1, len(pdm["hellinger_by_step"]) + 1)
    ax.plot(steps, pdm["hellinger_by_step"], marker="o", color=VIS)
    ax.set_xlabel("generated token")
    ax.set_ylabel("Hellinger(with image, without)")
    ax.set_ylim(0, 1)
    return _png(fig)


def example_overlay(example: dict) -> bytes:
    """The example's image, and beside it each image player's Shapley value painted over its cell."""
    import matplotlib.pyplot as plt
    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(example["image_png"]))).convert("RGB")
    fig, axes = plt.subplots(1, 2, figsize=(4.2, 2.2), dpi=110)
    w, h = img.size
    y0, x0, y1, x1 = example.get("view_box") or (0, 0, 1, 1)
    g = example["grid"]
    phi = np.array(example["patch_phi"], dtype=float)
    vmax = max(np.abs(np.concatenate([phi, np.asarray(example["token_phi"], dtype=float)])).max(), 1e-9)
    heat = np.full((g, g), np.nan)
    for cell, value in zip(example["cells"], phi, strict=True):
        heat[cell // g, cell % g] = value
    axes[0].imshow(img)
    axes[1].imshow(img, alpha=0.35)
    axes[1].imshow(heat, cmap="RdBu_r", vmin=-vmax, vmax=vmax, alpha=0.8,
                   extent=(x0 * w, x1 * w, y1 * h, y0 * h), interpolation="nearest")
    for k in range(1, g):  # cell borders
        axes[1].axhline(y0 * h + k * (y1 - y0) * h / g, color="white", lw=0.6)
        axes[1].axvline(x0 * w + k * (x1 - x0) * w / g, color="white", lw=0.6)
    for ax in axes:
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_axis_off()
    return _png(fig)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
