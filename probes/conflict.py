"""conflict: which side wins when the question alone and the image point to different answers.

Per sample, three answers from passes the audit already makes (shared with ``ablation``, so free when it runs):
the full input's, the *question alone*'s (the image removed: a prompt without image tokens, or with
``image_absent: baseline`` the image replaced by the baseline) and the *image alone*'s (the question masked).

- A **wording conflict** is a sample whose question-alone answer is wrong: the words point away from what the
  picture shows. ``follows_text`` = 1 if the full model gives that same wrong answer, else 0.
  "Follows the wording over the image on 41% of conflicts" is its mean.
- An **image conflict** is a sample whose image-alone answer is wrong: what the picture suggests without the
  question is not what was asked. ``follows_image`` = 1 if the full model gives that answer anyway.

Both need only the gold answers, so they work on any dataset, not just one built to contradict a prior. An
unbiased model that sees answers conflicts correctly (rate ~0); a model that answers from the wording repeats
the question-alone answer (rate -> 1); a model that cannot see gives the question-alone answer always (1.0).
With two choices every wrong answer *is* the question-alone answer, so on yes/no data the rate is the error
rate on conflicts: a yes-bias (POPE's classic language prior) reads as following the wording, as it should.
Accuracy when the question alone agrees with the gold answer and when it conflicts are recorded beside it: a
model that does not lean on the wording is as accurate on both.

Every one of these is a rate on samples that the audited model's own no-image (or question-masked) answers pick,
so two audits of different models count different conflicts: a fine-tune that makes some no-image answers right
takes those samples out of its own denominator. A comparison therefore re-derives them on one population
(``ConflictProbe.rebase``): the data's planted cue where every sample declares its answer (``cue_answer``: a
wording conflict is a sample whose cue answer is wrong, and following the wording is giving the cue's answer),
else the reference (before) audit's no-image and image-alone answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mbias.display import fmt, pct
from mbias.errors import ConfigError
from mbias.example import normalize_answer
from mbias.probes.base import DOWN, KEEP, MASK, PROBES, REMOVED, UP, Measure, Probe, Rebased, SampleContext
from mbias.stats import bootstrap_mean


@dataclass
class ConflictConfig:
    image_absent: str = field(default="removed", metadata={
        "help": "the question-alone pass: removed (a prompt without image tokens, the default) or baseline (the "
                "image replaced by the audit's image baseline)"})

    def __post_init__(self):
        if self.image_absent not in ("removed", "baseline"):
            raise ConfigError(f"image_absent must be removed or baseline, not {self.image_absent!r}")


def conflict_record(full: str, text_alone: str, image_alone: str, gold: str) -> dict:
    """The per-sample fields from the three answers (None where the sample is not a conflict of that kind)."""
    same = lambda a, b: normalize_answer(a) == normalize_answer(b)  # noqa: E731
    text_conflict, image_conflict = not same(text_alone, gold), not same(image_alone, gold)
    correct = float(same(full, gold))
    return {
        "pred_text_alone": text_alone, "pred_image_alone": image_alone,
        "text_conflict": float(text_conflict), "image_conflict": float(image_conflict),
        "follows_text": float(same(full, text_alone)) if text_conflict else None,
        "follows_image": float(same(full, image_alone)) if image_conflict else None,
        "correct_text_conflict": correct if text_conflict else None,
        "correct_text_agrees": None if text_conflict else correct,
    }


@PROBES.register("conflict")
class ConflictProbe(Probe):
    config_class = ConflictConfig
    title = "Conflicts: wording against image"
    note = ("A model that looks at the image is as accurate where the question alone is wrong as where it is right; "
            "the gap between the two accuracies is the price of following the wording.")
    measures = (Measure("follows_text", "follows the wording over the image (wording conflicts)", DOWN, rate=True,
                        per_category=True, card="follows_wording"),
                Measure("follows_image", "gives the image-alone answer over the question (image conflicts)", DOWN,
                        rate=True),
                Measure("correct_text_conflict", "accuracy on wording conflicts", UP, rate=True),
                Measure("correct_text_agrees", "accuracy where the wording points to the right answer", UP,
                        rate=True))
    summary_schema = {"type": "object",
                      "required": ["follows_text", "follows_image", "n_text_conflicts", "n_image_conflicts"],
                      "properties": {"follows_text": {"$ref": "#/$defs/stat"},
                                     "follows_image": {"$ref": "#/$defs/stat"},
                                     "n_text_conflicts": {"type": "integer"}, "n_image_conflicts": {"type": "integer"}}}
    evidence = ("conflict", 0)
    definition = ("On the samples where the question alone (image removed) gives a wrong answer, how often the "
                  "model gives that same answer with the image in view: it follows the wording over the image. "
                  "And the counterpart: where the image alone (question masked) gives a wrong answer, how often "
                  "the model gives it anyway.")

    def run(self, ctx: SampleContext) -> dict:
        absent = REMOVED if self.config.image_absent == "removed" else ctx.scorer.config.image_baseline
        full, text_alone, image_alone = ctx.outcomes([(KEEP, KEEP), (absent, KEEP), (KEEP, MASK)])
        return conflict_record(full.prediction, text_alone.prediction, image_alone.prediction, ctx.example.answer)

    def summarize(self, records: list[dict], groups: list[str]) -> dict:
        out = super().summarize(records, groups)
        out["text_alone_accuracy"] = bootstrap_mean([1 - r["text_conflict"] for r in records], groups)
        out["n_text_conflicts"] = int(sum(r["text_conflict"] for r in records))
        out["n_image_conflicts"] = int(sum(r["image_conflict"] for r in records))
        return out

    @classmethod
    def rebase(cls, records: list[dict], references: list[dict], reference: str) -> Rebased:
        """Every conflict measure of ``records`` on the conflicts the references define: the wording conflicts by
        the declared cue when every reference carries ``cue_answer``, else by the reference audit's no-image
        answers; the image conflicts by its image-alone answers. Follows = the sample's full prediction is the
        answer that defines the conflict."""
        cue = all(ref.get("cue_answer") is not None for ref in references)
        out = []
        for rec, ref in zip(records, references, strict=True):
            theirs, mine = ref["probes"]["conflict"], rec["probes"]["conflict"]
            wording = ref["cue_answer"] if cue else theirs["pred_text_alone"]
            out.append({**conflict_record(rec["prediction"], wording, theirs["pred_image_alone"], rec["answer"]),
                        "pred_text_alone": mine["pred_text_alone"], "pred_image_alone": mine["pred_image_alone"]})
        n_text = int(sum(r["text_conflict"] for r in out))
        n_image = int(sum(r["image_conflict"] for r in out))
        if cue:
            wrong = f"the {n_text} samples whose declared cue answer is wrong"
            right = f"the {len(out) - n_text} samples whose declared cue answer is right"
        else:
            wrong = f"the {n_text} samples where the {reference} model's no-image answer is wrong"
            right = f"the {len(out) - n_text} samples where the {reference} model's no-image answer is right"
        image = f"the {n_image} samples where the {reference} model's image-alone answer is wrong"
        basis = (f"the data's declared cue answers (wording) and the {reference} model's image-alone answers" if cue
                 else f"the {reference} model's no-image and image-alone answers")
        return Rebased(out, {"follows_text": wrong, "correct_text_conflict": wrong, "correct_text_agrees": right,
                             "follows_image": image}, basis)

    @classmethod
    def report_rows(cls, summary: dict) -> list[tuple[str, str]]:
        return [
            (f"follows the wording over the image ({summary['n_text_conflicts']} wording conflicts)",
             pct(summary["follows_text"])),
            (f"gives the image-alone answer over the question ({summary['n_image_conflicts']} image conflicts)",
             pct(summary["follows_image"])),
            ("accuracy where the question alone gets it wrong", fmt(summary["correct_text_conflict"])),
            ("accuracy where the question alone gets it right", fmt(summary["correct_text_agrees"])),
            ("answered right from the question alone (no image)", fmt(summary["text_alone_accuracy"]))]

    def describe(self, scorer) -> dict:
        info = super().describe(scorer)
        info.update(question_alone=f"image {self.config.image_absent}", image_alone="question masked",
                    value_function="predicted answer (argmax over choices, else greedy generation)",
                    estimator="direct", budget="3 scored variants per sample (shared with ablation)")
        return info
