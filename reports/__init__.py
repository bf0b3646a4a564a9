"""Reports from summary.json alone (no torch): HTML, Markdown, model card, plots, comparisons.

``render_audit(dir)`` re-renders an audit folder; ``render_compare(a, b)`` writes a side-by-side of two audits
(e.g. before and after a balancing fine-tune) with differences and their intervals.
"""

from __future__ import annotations

import json
from pathlib import Path

from mbias.errors import MbiasError


def _load_summary(folder: Path) -> dict:
    path = folder / "summary.json"
    if not path.exists():
        raise MbiasError(f"{folder} has no summary.json; run mbias audit first (or let it finish: rerunning the "
                         "same audit command resumes it)")
    try:
        summary = json.loads(path.read_text())
    except ValueError as exc:
        raise MbiasError(f"{path} is not valid JSON ({exc}); rerun the audit to rewrite it") from None
    from mbias.store import summary_problem  # Issue 31: say what an edited summary.json breaks

    problem = summary_problem(summary)
    if problem:
        raise MbiasError(f"{path}: {problem}; restore the file or rerun the same audit command to rewrite it")
    return summary


def _records(folder: Path) -> list[dict]:
    """The audit's per-sample records (a torn last line, from an interrupted run, is left out)."""
    from mbias.store import all_records

    return all_records(folder)


def figures(summary: dict, records: list[dict]) -> dict[str, bytes]:
    """Every plot the audit's probes declare, drawn, plus the per-category shares; by plot name."""
    from mbias.reports import plots
    from mbias.reports.content import probe_class

    out = {}
    for name, probe_summary in summary["probes"].items():
        cls = probe_class(name)
        for plot in cls.plots if cls else ():
            png = plots.draw(plot, probe_summary, [r["probes"][name] for r in records if name in r["probes"]])
            if png is not None:
                out[plot.name] = png
    per_category = plots.per_category(summary)
    if per_category is not None:
        out["per_category"] = per_category
    return out


def render_audit(folder: str | Path, out: str | Path | None = None) -> Path:
    """Write report.html, report.md, model_card.md and plots/*.png for an audit folder; returns the HTML path."""
    from mbias.reports import plots
    from mbias.reports.html import render_html
    from mbias.reports.markdown import render_markdown, render_model_card

    folder = Path(folder)
    target = Path(out) if out else folder
    if target.suffix == ".html":
        target, html_name = target.parent, target.name
    else:
        html_name = "report.html"
    target.mkdir(parents=True, exist_ok=True)
    summary = _load_summary(folder)
    figs = figures(summary, _records(folder))
    overlays = [plots.example_overlay(ex) for ex in summary.get("examples", [])]
    (target / "plots").mkdir(exist_ok=True)
    plot_files = {}
    for name, png in figs.items():
        (target / "plots" / f"{name}.png").write_bytes(png)
        plot_files[name] = f"plots/{name}.png"
    for i, png in enumerate(overlays):
        (target / "plots" / f"example_{i}.png").write_bytes(png)
    html_path = target / html_name
    html_path.write_text(render_html(summary, figs, overlays), encoding="utf-8")
    (target / "report.md").write_text(render_markdown(summary, plot_files), encoding="utf-8")
    (target / "model_card.md").write_text(render_model_card(summary), encoding="utf-8")
    return html_path


def render_compare(a: str | Path, b: str | Path, out: str | Path | None = None) -> Path:
    """Side-by-side of audit ``a`` (before) and ``b`` (after); returns the HTML path."""
    from mbias.reports.compare import write_compare

    return write_compare(Path(a), Path(b), Path(out) if out else None)


__all__ = ["render_audit", "render_compare"]
