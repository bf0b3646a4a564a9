"""A probe is one file: a toy probe declared here reaches summary.json, the schema, report.html, report.md, the
model card and the compare page without any other file knowing its name."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from huggingface_hub import ModelCard

from mbias.cli import main
from mbias.probes import PROBES
from mbias.probes.base import UP, Measure, Plot, Probe, Series


@pytest.fixture()
def toy_probe():
    @dataclass
    class ToyConfig:
        pass

    @PROBES.register("toy_probe")
    class ToyProbe(Probe):  # the whole probe: what it measures and everything it declares for the reports
        config_class = ToyConfig
        title = "Toy probe section"
        definition = "Whether the question has an even number of words."
        note = "toy note"
        measures = (Measure("toy_value", "toy value", UP, per_category=True, card="toy_metric"),)
        plots = (Plot("toy_plot", "bars", lambda s, recs: [Series("toy", ["value"], [s["toy_value"]["mean"]])],
                      ylabel="toy"),)
        summary_schema = {"type": "object", "required": ["toy_value"],
                          "properties": {"toy_value": {"$ref": "#/$defs/stat"}}}

        def run(self, ctx):
            return {"toy_value": float(len(ctx.example.question.split()) % 2 == 0)}

    yield ToyProbe
    PROBES._items.pop("toy_probe")


def test_a_toy_probe_reaches_every_output(toy_probe, tiny_model_dir, tmp_path):
    import jsonschema

    from mbias.reports.schema import summary_schema

    a, b = tmp_path / "a", tmp_path / "b"
    for out, baseline in ((a, "blank"), (b, "noise")):
        assert main(["audit", "--model", tiny_model_dir("llava"), "--data", "synth:shapes-p90/test-cp", "--out",
                     str(out), "--max-samples", "4", "--probes", "modality_shapley,toy_probe", "--no-progress",
                     "--image-baseline", baseline]) == 0
    summary = json.loads((a / "summary.json").read_text())
    schema = summary_schema()
    assert "toy_probe" in schema["properties"]["probes"]["properties"]
    jsonschema.validate(summary, schema)
    assert 0 <= summary["probes"]["toy_probe"]["toy_value"]["mean"] <= 1
    assert any("toy_probe" in row["probes"] for row in summary["per_category"].values())
    html = (a / "report.html").read_text()
    assert "Toy probe section" in html and "toy note" in html and "toy value" in html
    assert (a / "plots" / "toy_plot.png").exists()
    md = (a / "report.md").read_text()
    assert "## Toy probe section" in md and "plots/toy_plot.png" in md and "| toy value |" in md
    card = ModelCard((a / "model_card.md").read_text())
    assert "toy_metric" in {r.metric_type for r in card.data.eval_results}
    assert main(["report", str(a), "--compare", str(b), "--out", str(tmp_path / "cmp.html")]) == 0
    page = (tmp_path / "cmp.html").read_text()
    assert "toy value" in page and "Toy probe section: toy plot" in page
    assert "toy value" in (tmp_path / "cmp.md").read_text()


def test_the_shipped_schema_file_is_current():
    from mbias.reports.schema import FULL, summary_schema

    assert json.loads(FULL.read_text()) == summary_schema(), "run: python -m mbias.reports.schema"
