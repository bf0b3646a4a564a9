"""The audit's configuration: which probes, how many samples, masking choices, per-probe settings, verdict rule."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from mbias.config import build_config, check_number
from mbias.errors import ConfigError
from mbias.models.config import ScoringConfig
from mbias.records import parse_columns


def _default_probes() -> list[str]:
    from mbias.probes import DEFAULT_PROBES

    return list(DEFAULT_PROBES)


@dataclass
class AuditConfig:
    probes: list[str] = field(default_factory=_default_probes,
                              metadata={"help": "probes to run, in order"})
    max_samples: int | None = field(default=None, metadata={"help": "audit at most this many samples (a stopping "
                                                                    "point: raising it later resumes the run)"})
    seed: int = field(default=0, metadata={"help": "run seed; each sample's seed derives from it and the sample id"})
    verdict_margin: float = field(default=0.05, metadata={
        "help": "a modality dominates when its share's 95% interval lies above 0.5 + margin"})
    report_examples: int = field(default=4, metadata={"help": "examples with attribution overlays in the report"})
    columns: dict[str, str] = field(default_factory=dict, metadata={
        "help": "dataset columns under other names, e.g. answer=multiple_choice_answer,question=text (see "
                "docs/datasets.md)"})
    scoring: ScoringConfig = field(default_factory=ScoringConfig, metadata={"help": "masking and scoring"})
    probe_config: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={
        "help": "per-probe settings, e.g. {mm_shap: {n_permutations: 10}}"})
    decode: str | None = field(default=None, metadata={
        "help": "score and generate through a decode-time fix, NAME[:k=v,...]: contrastive[:alpha=A,beta=B] or "
                "vcd[:alpha=A,beta=B,noise_step=T] (docs/recipes.md); default: plain greedy decoding"})

    def __post_init__(self):
        if isinstance(self.scoring, dict):
            self.scoring = build_config(ScoringConfig, self.scoring, where="scoring")
        if not isinstance(self.scoring, ScoringConfig):
            raise ConfigError(f"scoring must be a mapping of masking and scoring settings, e.g. {{patch_grid: 4}}; "
                              f"got {self.scoring!r:.80}")
        if isinstance(self.probes, str):
            self.probes = [p.strip() for p in self.probes.split(",") if p.strip()]
        if not isinstance(self.probes, (list, tuple)) or not all(isinstance(p, str) for p in self.probes):
            raise ConfigError(f"probes must be a list of probe names (or name,name,...); got {self.probes!r:.80}")
        if not self.probes:
            raise ConfigError("no probes selected; name at least one (mbias audit --list-probes lists them), or "
                              "leave probes out for the standard set")
        self.probes = list(self.probes)
        if not isinstance(self.probe_config, dict) or not all(
                isinstance(v, dict) or v is None for v in self.probe_config.values()):
            raise ConfigError(f"probe_config must map probe names to their settings, e.g. {{mm_shap: {{grid: 4}}}}; "
                              f"got {self.probe_config!r:.80}")
        self.columns = parse_columns(self.columns)
        from mbias.decoding import parse_decode

        spec = parse_decode(self.decode)  # Issue 30: one canonical spelling, so equal specs resume each other
        self.decode = None if spec is None else str(spec)
        check_number(self, "max_samples", integer=True, ge=1, optional=True)
        check_number(self, "seed", integer=True, ge=0)
        check_number(self, "verdict_margin", ge=0, lt=0.5)
        check_number(self, "report_examples", integer=True, ge=0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self, model: str, adapter_path: str | None, data: str) -> str:
        """What the per-sample results depend on. ``max_samples`` is left out: it only says where to stop."""
        d = self.to_dict()
        d.pop("max_samples")
        d.pop("report_examples")
        if d.get("decode") is None:  # Issue 30: audits from before --decode existed keep their fingerprint
            d.pop("decode", None)
        from mbias.zoo import model_identity

        blob = json.dumps({"config": d, "model": model_identity(model), "adapter": adapter_path, "data": data},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_probes(config: AuditConfig) -> dict:
    """Probe instances by name; unknown names and bad settings raise ConfigError before anything runs."""
    from mbias.probes import PROBES

    unknown = set(config.probe_config) - set(PROBES.names())
    if unknown:
        PROBES.get(sorted(unknown)[0])  # raises with "did you mean"
    probes = {}
    for name in config.probes:
        cls = PROBES.get(name)
        cfg = build_config(cls.config_class, config.probe_config.get(name) or {}, where=f"probe_config.{name}")
        probes[name] = cls(cfg)
    return probes
