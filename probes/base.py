"""What every probe shares: the registry, what a probe declares for the reports, the per-sample context, and
memoised modality-ablated outcomes.

A probe turns one prepared example into one plain-float record (``run``) and a list of records into summary
numbers with intervals (``summarize``). Probes never touch architecture details: they ask the sample context for
scores of masked variants, and the context asks the model's scorer (``mbias.models.Scorer``). Outcomes that several probes need (the full
input, the image masked, the question masked, ...) are computed once per sample and shared.

A probe is one file: besides measuring, it declares what it contributes to everything downstream (the way
lm-eval registers a metric with its aggregation and direction), and ``diagnose/`` and ``reports/`` loop over the
registry: its ``measures`` (per-sample numbers with the direction that is better, which become the compare
page's rows, per-category columns and model-card metrics), its report ``title``, ``report_rows`` and ``note``,
its ``plots`` (data only: ``reports/plots.py`` draws them), its ``summary_schema`` (its part of
``summary.schema.json``) and, for the few probes the verdict rests on, its ``evidence``. This module and every
probe module import torch only inside the functions that compute, so the reports (which must render from
``summary.json`` alone, without torch) can read the declarations.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mbias.display import fmt
from mbias.example import normalize_answer
from mbias.registry import Registry
from mbias.stats import bootstrap_mean
from mbias.variants import KEEP, MASK, REMOVED  # noqa: F401 (the probes' vocabulary)

if TYPE_CHECKING:
    import torch

    from mbias.models.types import Prepared



def sample_seed(run_seed: int, sample_id: str, salt: str = "") -> int:
    """A per-sample seed from the run seed and the sample id: independent of order, sharding and resuming."""
    digest = hashlib.sha256(f"{run_seed}:{salt}:{sample_id}".encode()).hexdigest()
    return int(digest[:8], 16)


@dataclass(frozen=True)
class Outcome:
    """The model on one modality-ablated input: log p(gold answer), its prediction, and whether it is right."""

    logprob: float
    prediction: str
    correct: bool
    choice_logprob: float | None = None  # log p(gold) renormalised over the example's choices


@dataclass
class SampleContext:
    """Everything a probe may use for one sample; outcomes are memoised across probes."""

    scorer: Any  # mbias.models.Scorer: the loaded model behind one family's interface
    prepared: Prepared
    run_seed: int = 0
    swap_image: Any = None  # another sample's image, for the swap baseline
    _text_only: Prepared | None = None
    _outcomes: dict = field(default_factory=dict)

    @property
    def example(self):
        return self.prepared.example

    def rng(self, salt: str) -> np.random.Generator:
        return np.random.default_rng(sample_seed(self.run_seed, self.example.id, salt))

    @property
    def text_only(self) -> Prepared:
        """The example prompted without any image (no image tokens at all)."""
        if self._text_only is None:
            self._text_only = self.scorer.prepare(self.example, with_image=False)
        return self._text_only

    def outcomes(self, variants: list[tuple[str, str]]) -> list[Outcome]:
        """Outcomes for (image, text) modes: image in {keep, removed, or a baseline kind}, text in {keep, mask}.

        All uncomputed variants that share a prompt go through one batched scoring call.
        """
        todo = [v for v in dict.fromkeys(variants) if v not in self._outcomes]
        with_image = [v for v in todo if v[0] != REMOVED]
        if with_image:
            self._compute(self.prepared, with_image)
        without = [v for v in todo if v[0] == REMOVED]
        if without:
            self._compute(self.text_only, without)
        return [self._outcomes[v] for v in variants]

    def outcome(self, image: str = KEEP, text: str = KEEP) -> Outcome:
        return self.outcomes([(image, text)])[0]

    def _compute(self, prepared: Prepared, variants: list[tuple[str, str]]) -> None:
        import torch

        ad = self.scorer
        ids_rows, feat_rows = [], []
        for image, text in variants:
            text_keep = None if text == KEEP else torch.zeros(1, prepared.n_question, dtype=torch.bool)
            image_keep = None
            if image not in (KEEP, REMOVED):
                image_keep = torch.zeros(1, ad.patch_groups(prepared).n, dtype=torch.bool)
            ids, feats = ad.variant_inputs(prepared, image_keep, text_keep, baseline=None if image in (
                KEEP, REMOVED) else image, swap_image=self.swap_image)
            ids_rows.append(ids)
            feat_rows.append(feats)
        ids = torch.cat(ids_rows)
        feats = None if feat_rows[0] is None else torch.cat(feat_rows)
        for key, outcome in zip(variants, self.evaluate(prepared, ids, feats), strict=True):
            self._outcomes[key] = outcome

    def evaluate(self, prepared: Prepared, ids: torch.Tensor, feats: torch.Tensor | None) -> list[Outcome]:
        """Outcomes of explicit variants (prompt ids [V, P], image rows [V, N, D]) in as few passes as possible:
        with ``choices`` one batched scoring call gives both the gold log-prob and the prediction."""
        import torch

        ad = self.scorer
        gold = normalize_answer(self.example.answer)
        if prepared.choice_ids:
            scores = ad.score_inputs(prepared, ids, feats, answers=prepared.choice_ids)  # [V, C]
            gold_idx = _gold_index(self.example)
            preds = [self.example.choices[int(i)] for i in scores.argmax(1)]
            norm = scores[:, gold_idx] - torch.logsumexp(scores, dim=1)
            return [Outcome(float(scores[v, gold_idx]), p, normalize_answer(p) == gold, float(norm[v]))
                    for v, p in enumerate(preds)]
        logps = ad.score_inputs(prepared, ids, feats)
        out = []
        for v in range(ids.shape[0]):
            pred = ad.generate_inputs(prepared, ids[v:v + 1], None if feats is None else feats[v:v + 1])
            out.append(Outcome(float(logps[v]), pred, normalize_answer(pred) == gold))
        return out


def _gold_index(example) -> int:
    gold = normalize_answer(example.answer)
    for i, c in enumerate(example.choices):
        if normalize_answer(c) == gold:
            return i
    raise ValueError(f"example {example.id!r}: the answer is not among the choices")


UP, DOWN, AWAY = "up", "down", "away"  # better when it rises / falls / moves away from the dominant side


@dataclass(frozen=True)
class Measure:
    """A per-sample number a probe records (``record[key]``), aggregated with a bootstrap interval under the same
    key in its summary, and shown wherever it belongs: a compare row always; a per-category column and a
    model-card metric when asked."""

    key: str
    label: str
    better: str | None = None  # UP, DOWN, AWAY (a share: away from the side the verdict found dominant), None
    rate: bool = False  # a proportion, shown as a percentage
    per_category: bool = False
    card: str | None = None  # the model-index metric type, when the measure goes on the model card


@dataclass(frozen=True)
class Rebased:
    """A probe's per-sample records with its conditional measures re-derived against a reference audit's records
    of the same samples (``Probe.rebase``), so that two audits rebased on the same reference have them on the same
    samples."""

    records: list[dict]  # the probe's per-sample records, aligned with the sample records given
    populations: dict[str, str]  # measure key -> the samples it is defined on, in words ("the 60 samples whose ...")
    basis: str  # what picks those samples, in words ("the data's declared cue answers")


@dataclass(frozen=True)
class Series:
    """One line, bar set or histogram of a plot: x positions (or bar names), values, and an optional interval."""

    label: str
    x: list
    y: list
    lo: list | None = None
    hi: list | None = None
    side: str = "neutral"  # the colour: language, vision or neutral


@dataclass(frozen=True)
class Plot:
    """A figure a probe contributes, as data: ``series(probe_summary, probe_records)`` -> the series to draw ([]
    for none); ``kind`` is hist (of per-sample values), bars or lines. ``reports/plots.py`` draws it."""

    name: str
    kind: str
    series: Callable[[dict, list[dict]], list[Series]]
    xlabel: str = ""
    ylabel: str = ""
    ylim: tuple[float, float] | None = None
    ref: float | None = None  # a reference line: vertical on a histogram, horizontal otherwise


class Probe:
    """Base class. Subclasses set ``config_class``, implement ``run``, declare their report outputs, and register
    by name. ``summarize`` aggregates every declared measure; a probe adds what else its summary holds."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = type(None)
    title: ClassVar[str] = ""  # the report section's heading
    definition: ClassVar[str] = ""  # one sentence for the report
    note: ClassVar[str] = ""  # a caveat printed under the section
    measures: ClassVar[tuple[Measure, ...]] = ()
    plots: ClassVar[tuple[Plot, ...]] = ()
    summary_schema: ClassVar[dict] = {"type": "object"}
    # (kind, rank): what the verdict may rest on ("share": a language share in [0, 1] under ``share_key``, lower
    # rank preferred; "conflict": follows_text / follows_image rates); None: not verdict evidence
    evidence: ClassVar[tuple[str, int] | None] = None
    share_key: ClassVar[str] = ""

    def __init__(self, config=None):
        self.config = config if config is not None else self.config_class()

    def run(self, ctx: SampleContext) -> dict:
        raise NotImplementedError

    def summarize(self, records: list[dict], groups: list[str]) -> dict:
        return {m.key: bootstrap_mean([r.get(m.key) for r in records], groups) for m in self.measures}

    @classmethod
    def report_rows(cls, summary: dict) -> list[tuple[str, str]]:
        """(label, value) rows of the report section, from this probe's part of summary.json."""
        return [(m.label, fmt(summary.get(m.key))) for m in cls.measures]

    @classmethod
    def rebase(cls, records: list[dict], references: list[dict], reference: str) -> Rebased | None:
        """For a comparison of two audits: this probe's per-sample values of ``records`` (one audit's sample
        records) with every measure that is defined only on samples the audited model's own answers pick (a
        conditional rate) re-derived on the samples that ``references`` (the same samples' records in the audit
        named ``reference``, e.g. "before"; aligned with ``records``) pick. None (the default): the probe has no
        such measure, and its values are compared as recorded."""
        return None

    def describe(self, scorer) -> dict:
        """Method details recorded with the results: masks, value function, estimator, budget."""
        cfg = scorer.config
        return {"config": asdict(self.config), "image_baseline": cfg.image_baseline,
                "text_baseline": cfg.text_baseline, "masking": cfg.masking, "patch_grid": cfg.patch_grid}


PROBES: Registry[Probe] = Registry("probe", Probe)
