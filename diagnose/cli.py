"""``mbias audit``: flags and an optional YAML file -> AuditConfig -> ``mbias.audit`` -> one line with the verdict."""

from __future__ import annotations

from mbias.api import audit
from mbias.config import build_config, load_yaml, values_from_args
from mbias.diagnose.config import AuditConfig
from mbias.models.config import LoadOptions, ScoringConfig


def audit_config_from_args(args) -> AuditConfig:
    file_values = load_yaml(args.config) if args.config else {}
    scoring_values = dict(file_values.pop("scoring", {}) or {})
    scoring_values.update(values_from_args(args, ScoringConfig))
    cli = {"scoring": build_config(ScoringConfig, scoring_values, where=args.config or "flags")}
    if args.probes is not None:  # Issue 31: --probes "" is an empty list, refused, not the default set
        cli["probes"] = args.probes
    if args.max_samples is not None:
        cli["max_samples"] = args.max_samples
    if args.seed is not None:
        cli["seed"] = args.seed
    if args.columns is not None:
        cli["columns"] = args.columns
    if getattr(args, "decode", None) is not None:  # Issue 30
        cli["decode"] = args.decode
    return build_config(AuditConfig, file_values, cli, where=args.config or "flags")


def run_audit_command(args) -> int:
    config = audit_config_from_args(args)
    load = LoadOptions.from_args(args)
    result = audit(args.model, data=args.data, config=config, out=args.out, load=load, overwrite=args.overwrite,
                   on_error=args.on_error, progress=not args.no_progress, report=not args.no_report)
    if result is None:  # a non-main process under accelerate
        return 0
    print(verdict_line(result.summary, f"{args.out}/summary.json" if args.no_report else f"{args.out}/report.html"))
    return 0


def verdict_line(summary: dict, where: str) -> str:
    from mbias.display import pct
    from mbias.reports.content import has_conflict_evidence, share_phrase, verdict_label

    v = summary["verdict"]
    if v["dominant_modality"] is None:
        return f"audit of {summary['n_samples']} samples written to {where} (no verdict: {v.get('note')})"
    parts = []
    if has_conflict_evidence(v):
        if v["dominant_modality"] == "vision":
            parts.append(f"gives the image-alone answer over the question on {pct(v['follows_image'])} of "
                         f"{v['n_image_conflicts']} image conflicts")
        parts.append(f"follows the wording over the image on {pct(v['follows_text'])} of {v['n_text_conflicts']} "
                     "conflicts")
    if v.get("language_share") is not None:
        parts.append(share_phrase(v))
    return (f"{verdict_label(v)}: {'; '.join(parts)} ({summary['n_samples']} samples, accuracy "
            f"{summary['accuracy']:.2f}) -> {where}")
