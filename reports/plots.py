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


def _error_bars(means: list[float], intervals: list) -> list[list[float]]:
    """matplotlib's [below, above] distances from each mean to its 95% interval."""
    return [[m - ci[0] for m, ci in zip(means, intervals, strict=True)],
            [ci[1] - m for m, ci in zip(means, intervals, strict=True)]]


def per_category(summary: dict) -> bytes | None:
    """The share the verdict reads (modality Shapley's, else T-SHAP), per category."""
    from mbias.reports.content import probe_class

    probe = next((n for n in summary["probes"] if (getattr(probe_class(n), "evidence", None) or ("",))[0] == "share"),
                 None)
    if probe is None:
        return None
    key = probe_class(probe).share_key
    cats = summary.get("per_category") or {}
    stats = [(c, v, v.get("probes", {}).get(probe, {}).get(key)) for c, v in cats.items()]
    rows = [(c, v, st) for c, v, st in stats if st and st["mean"] is not None]
    if not rows:
        return None
    fig, ax = _fig(6.4, 0.45 * len(rows) + 1.2)
    y = np.arange(len(rows))
    means = [st["mean"] for _, _, st in rows]
    ax.barh(y, means, xerr=_error_bars(means, [st["ci95"] for _, _, st in rows]), color=LANG, alpha=0.8,
            capsize=3)
    ax.set_yticks(y, [f"{c} (n={v['n']})" for c, v, _ in rows])
    ax.axvline(0.5, color="black", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_xlabel("language share, 95% interval")
    return _png(fig)


COLOURS = {"language": LANG, "vision": VIS, "neutral": GREY}


def draw(plot, probe_summary: dict, probe_records: list[dict]) -> bytes | None:
    """A probe's declared figure (``mbias.probes.Plot``), drawn: a histogram of per-sample values, bars with
    intervals, or lines with optional bands. None when the probe has nothing to show."""
    series = plot.series(probe_summary, probe_records)
    if not series or not any(len(s.y) for s in series):
        return None
    fig, ax = _fig(6.4, 2.8 if plot.kind != "hist" else 3.2)
    if plot.kind == "hist":
        bins = np.linspace(0, 1, 21)
        for s in series:
            ax.hist(s.y, bins=bins, alpha=0.7, color=COLOURS[s.side], label=s.label)
        if plot.ref is not None:
            ax.axvline(plot.ref, color="black", lw=0.8, ls="--")
    elif plot.kind == "bars":
        start, ticks, names = 0, [], []
        for s in series:
            x = np.arange(start, start + len(s.y))
            err = _error_bars(s.y, list(zip(s.lo, s.hi, strict=True))) if s.lo is not None else None
            ax.bar(x, s.y, yerr=err, color=COLOURS[s.side], capsize=3, label=s.label)
            ticks += list(x)
            names += [str(n) for n in s.x]
            start += len(s.y)
        ax.set_xticks(ticks, names, fontsize=8)
    else:  # lines
        for s in series:
            ax.plot(s.x, s.y, marker="o", color=COLOURS[s.side], label=s.label)
            if s.lo is not None:
                ax.fill_between(s.x, s.lo, s.hi, color=COLOURS[s.side], alpha=0.15)
        if plot.ref is not None:
            ax.axhline(plot.ref, color="black", lw=0.6, ls=":")
    ax.set_xlabel(plot.xlabel)
    ax.set_ylabel(plot.ylabel)
    if plot.ylim:
        ax.set_ylim(*plot.ylim)
    if len(series) > 1 or plot.kind == "hist":
        ax.legend(frameon=False, fontsize=8)
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
