"""mbias from Python: ``audit`` a model you hold (or a reference), and what an audit returns.

``audit`` is the pipeline the ``mbias audit`` command runs (the command is a thin layer over it), so the same model
and data give the same records and summary either way. A model already in memory is scored as it is (no copy:
a device map, 4/8-bit weights, a ``PeftModel`` with its adapters, the processor's own chat template), in eval
mode, with every module's train/eval mode restored afterwards.
"""

from __future__ import annotations

import dataclasses
import html
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas

    from mbias.diagnose.config import AuditConfig
    from mbias.models.config import LoadOptions


def audit(model: Any, processor: Any = None, data: Any = None, probes: list[str] | str | None = None, *,
          config: AuditConfig | dict | None = None, out: str | Path | None = None, seed: int | None = None,
          progress: bool = True, load: LoadOptions | None = None, overwrite: bool = False,
          on_error: str = "stop", report: bool = True, decode: str | None = None) -> AuditResult | None:
    """Audit how much ``model`` relies on the question's wording versus the image, on ``data``.

    - ``model``: an HF image-text model object (``AutoModelForImageTextToText``, a ``PeftModel``, device-mapped or
      quantized) with its ``processor``; or a reference (hub id, local folder, ``zoo:NAME``), loaded with ``load``
      (``mbias.models.LoadOptions``: adapter, device, dtype, ...), then ``processor`` is not needed.
    - ``data``: a reference (``.jsonl``, a folder, ``synth:NAME/SPLIT``, ``hf:REPO:SPLIT``), a ``datasets.Dataset``
      or a list of dicts ``{id, image (a path or a PIL image), question, answer, choices?, category?}``.
    - ``probes``: names to run (default: every default probe, ``mbias.probes.DEFAULT_PROBES``); ``config`` an
      ``AuditConfig`` (or a dict of its fields) for everything else; ``seed`` overrides ``config.seed``.
    - ``out``: a folder to write the audit to as ``mbias audit --out`` does (manifest, per-sample results as they
      are computed, summary, and with ``report`` the HTML/Markdown reports); rerunning on the same folder resumes
      it, and a folder holding another model's or data's audit is refused unless ``overwrite``. Without ``out``
      nothing stays on disk (``AuditResult.save`` writes it later).
    - ``decode``: audit the model as served through a decode-time fix, ``"contrastive:alpha=1"`` or
      ``"vcd:alpha=1,beta=0.1"`` (``mbias.decoding``; overrides ``config.decode``): every probe's scores and every
      generation go through it, and ``summary["decode"]`` records it.

    Returns an ``AuditResult`` (None on the non-main processes of an ``accelerate launch`` run).
    """
    from mbias.config import build_config
    from mbias.diagnose.config import AuditConfig
    from mbias.diagnose.runner import audit_model
    from mbias.errors import ConfigError

    if data is None:
        raise ConfigError("mbias.audit needs data: a reference (synth:NAME/SPLIT, a .jsonl file, ...), a "
                          "datasets.Dataset or a list of dicts")
    if isinstance(config, dict):
        config = build_config(AuditConfig, config, where="config")
    config = config or AuditConfig()
    overrides = {}
    if probes is not None:
        overrides["probes"] = probes
    if seed is not None:
        overrides["seed"] = seed
    if decode is not None:
        overrides["decode"] = decode
    if overrides:
        config = dataclasses.replace(config, **overrides)  # re-validated
    if out is None:
        with tempfile.TemporaryDirectory(prefix="mbias-audit-") as tmp:
            done = audit_model(model, processor, data, tmp, config=config, load=load, on_error=on_error,
                               progress=progress, report=False)
    else:
        done = audit_model(model, processor, data, out, config=config, load=load, overwrite=overwrite,
                           on_error=on_error, progress=progress, report=report)
    if done is None:
        return None
    summary, records, manifest = done
    return AuditResult(summary, records, manifest, Path(out) if out is not None else None)


@dataclass
class AuditResult:
    """One audit: ``summary`` (the ``summary.json`` content), ``records`` (one dict per sample, as in
    ``results.jsonl``), ``manifest`` (config and provenance) and ``out``, the folder it lives in (None when it was
    run without one and not saved)."""

    summary: dict
    records: list[dict]
    manifest: dict = field(repr=False)
    out: Path | None = None

    @property
    def verdict(self) -> dict:
        """``summary["verdict"]``: ``dominant_modality``, ``severity``, ``follows_text``, ``language_share``, ..."""
        return self.summary["verdict"]

    @classmethod
    def load(cls, folder: str | Path) -> AuditResult:
        """An audit folder written by ``mbias audit`` or ``save``."""
        from mbias.reports import _load_summary, _records

        folder = Path(folder)
        summary = _load_summary(folder)
        return cls(summary, _records(folder), json.loads((folder / "manifest.json").read_text()), folder)

    def to_pandas(self) -> pandas.DataFrame:
        """One row per sample; probe fields as ``probe.field`` columns (needs pandas)."""
        import pandas as pd

        return pd.json_normalize(self.records, sep=".")

    def save(self, folder: str | Path, *, report: bool = True) -> Path:
        """Write the folder ``mbias audit --out`` writes: manifest.json, results.jsonl, summary.json and, with
        ``report``, report.html, report.md, model_card.md and plots/. Returns the folder."""
        from mbias import store
        from mbias.outdir import check_out_dir

        folder = check_out_dir(folder)
        folder.mkdir(parents=True, exist_ok=True)
        store.write_json_atomic(folder / store.MANIFEST, self.manifest)
        tmp = folder / f".{store.RESULTS}.tmp"
        tmp.write_text("".join(json.dumps(r, default=store._plain) + "\n" for r in self.records), encoding="utf-8")
        tmp.replace(folder / store.RESULTS)
        store.write_json_atomic(folder / store.SUMMARY, self.summary)
        if report:
            from mbias.reports import render_audit

            render_audit(folder)
        if self.out is None:
            self.out = folder
        return folder

    def compare(self, other: AuditResult) -> Comparison:
        """``self`` (before) against ``other`` (after): the content of ``mbias report --compare``, each measure's
        difference with its interval and judgement, conditional rates on one population for both."""
        from mbias.reports.compare import comparison_of

        return Comparison(comparison_of(self.summary, self.records, other.summary, other.records), self, other)

    def _repr_html_(self) -> str:
        from mbias.reports import html as report_html
        from mbias.reports.content import model_label, verdict_sentence

        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                       for k, v in report_html.cards(self.summary))
        return (f"<div class='mbias-audit'><h3>{html.escape(report_html.headline(self.verdict))}</h3>"
                f"<p><b>{html.escape(model_label(self.summary))}</b> on {html.escape(str(self.summary.get('data')))}"
                f"</p><p>{html.escape(verdict_sentence(self.summary))}</p><table>{rows}</table></div>")

    def __repr__(self) -> str:
        from mbias.reports.content import verdict_label

        return (f"AuditResult({verdict_label(self.verdict)}, n_samples={self.summary['n_samples']}, "
                f"accuracy={self.summary['accuracy']:.3f}, out={str(self.out) if self.out else None})")


@dataclass
class Comparison:
    """Two audits compared (``AuditResult.compare``): ``headline``, ``rows`` (one per measure: before, after,
    difference with its interval, judgement, and the samples a conditional rate is on), ``verdict_change``."""

    content: dict = field(repr=False)
    before: AuditResult = field(repr=False)
    after: AuditResult = field(repr=False)

    @property
    def headline(self) -> str:
        return self.content["headline"]

    @property
    def rows(self) -> list[dict]:
        return self.content["rows"]

    @property
    def verdict_change(self) -> dict:
        return self.content["change"]

    def to_dict(self) -> dict:
        """The ``compare.json`` content."""
        from mbias.reports.compare import compare_record

        return compare_record(self.content, self.before.out or "(in memory)", self.after.out or "(in memory)")

    def save(self, path: str | Path) -> Path:
        """compare.html, compare.md and compare.json at ``path`` (an .html file or a folder), as ``mbias report
        --compare`` writes them; an audit not yet saved is saved first, next to it (``audit-before/``,
        ``audit-after/``). Returns the HTML path."""
        from mbias.reports import render_compare

        path = Path(path)
        home = path.parent if path.suffix == ".html" else path
        for name, result in (("audit-before", self.before), ("audit-after", self.after)):
            if result.out is None:
                result.save(home / name)
        return render_compare(self.before.out, self.after.out, path)

    def _repr_html_(self) -> str:
        from mbias.reports.compare import _change, _value

        rows = "".join(
            f"<tr><td>{html.escape(r['measure'])}</td><td>{html.escape(_value(r['before'], r['rate']))}</td>"
            f"<td>{html.escape(_value(r['after'], r['rate']))}</td><td>{html.escape(_change(r))}</td>"
            f"<td>{html.escape(r['judgement'])}</td></tr>" for r in self.rows)
        return (f"<div class='mbias-compare'><p>{html.escape(self.headline)}</p><table><tr><th>measure</th>"
                f"<th>before</th><th>after</th><th>difference</th><th></th></tr>{rows}</table></div>")

    def __repr__(self) -> str:
        return f"Comparison({self.headline!r})"
