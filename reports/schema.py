"""summary.schema.json, built from a base (``summary_base.schema.json``: everything but the probes) and each
registered probe's ``summary_schema``, so adding a probe never means editing a shared schema file.

    python -m mbias.reports.schema      # rewrite reports/summary.schema.json (a test checks it is current)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
BASE, FULL = HERE / "summary_base.schema.json", HERE / "summary.schema.json"


def summary_schema() -> dict:
    from mbias.probes import PROBES

    schema = json.loads(BASE.read_text())
    schema["properties"]["probes"]["properties"] = {name: PROBES.get(name).summary_schema for name in PROBES.names()}
    return schema


def write() -> Path:
    FULL.write_text(json.dumps(summary_schema(), indent=2) + "\n")
    return FULL


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logger.info("wrote %s", write())
