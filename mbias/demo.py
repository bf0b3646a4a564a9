"""``mbias demo``: the mission on embedded defaults, on CPU, in a few minutes.

1. load ``zoo:shapes-p90``, a tiny LLaVA trained with a 90% language prior (a build that ships with mbias, so
   every machine audits the same weights: ``mbias zoo list`` shows what it does);
2. audit it with every probe on the counter-prior split, where following the prior is always wrong;
3. fine-tune it with the recipe that measured best against this bias (``poe``: a product of experts with a
   detached bias expert, the training data's answer counts per question wording; docs/recipes.md) and audit the
   result;
4. write the reports and a before/after comparison (every rate on the same samples for both), and say where they
   are with the verdicts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

MODEL = "zoo:shapes-p90"
AUDIT_DATA = "synth:shapes-p90/test-cp"
TRAIN_DATA = "synth:shapes-p90/train"
DEMO_RECIPE, DEMO_RECIPE_CONFIG = "poe", {"bias_expert": "prior_table"}  # best on val: results/recipes/legacy-selection.md
STEPS = 100
SAMPLES = 60


def run_demo(args, say: Callable[[str], None] = logger.info) -> int:
    """Run the four steps; ``say`` receives the progress lines (the CLI prints them, a library caller logs them)."""
    from mbias.diagnose.cli import verdict_line
    from mbias.diagnose.config import AuditConfig
    from mbias.diagnose.runner import run_audit
    from mbias.finetune.config import FinetuneConfig
    from mbias.finetune.run import run_finetune
    from mbias.models import LoadOptions
    from mbias.reports import render_compare
    from mbias.zoo import zoo_model_path

    out = Path(args.out)
    progress = not args.no_progress
    n = SAMPLES // 2 if args.quick else SAMPLES
    t0 = time.perf_counter()
    say(f"[1/4] zoo model {MODEL} (a tiny LLaVA trained from scratch with a 90% language prior; shipped with "
        "mbias, so every machine audits the same weights)")
    zoo_model_path(MODEL.removeprefix("zoo:"), progress=progress)

    say(f"[2/4] auditing it on {AUDIT_DATA} ({n} samples, all probes)")
    config = AuditConfig(max_samples=n, probe_config={"mm_shap": {"n_permutations": 10}})
    before = run_audit(MODEL, AUDIT_DATA, out / "audit-before", config=config, progress=progress, overwrite=True)
    say("      " + verdict_line(before, str(out / "audit-before" / "report.html")))

    steps = STEPS // 4 if args.quick else STEPS
    say(f"[3/4] fine-tuning it on {TRAIN_DATA} (the same biased data) with the {DEMO_RECIPE} recipe ({steps} LoRA "
        "steps): a product of experts with the answer counts per question wording, so the examples the wording "
        "already explains teach the model little and those it does not teach it to look")
    config_ft = FinetuneConfig(recipe=DEMO_RECIPE, recipe_config=DEMO_RECIPE_CONFIG, max_steps=steps,
                               per_device_train_batch_size=32, learning_rate=1e-3)
    adapter_dir = run_finetune(MODEL, TRAIN_DATA, out / "finetune", config=config_ft, progress=progress)

    say(f"[4/4] auditing the fine-tuned model on {AUDIT_DATA}")
    run_audit(MODEL, AUDIT_DATA, out / "audit-after", config=config, progress=progress, overwrite=True,
              load=LoadOptions(adapter=str(adapter_dir)))
    # before and after compared on the same samples (a conflict rate on each audit's own conflicts would count
    # different samples: docs/methods.md, "Comparing two audits")
    compare = render_compare(out / "audit-before", out / "audit-after", out / "compare.html")
    say("      " + json.loads(compare.with_suffix(".json").read_text())["headline"])
    say(f"done in {time.perf_counter() - t0:.0f} s; reports: {out / 'audit-before' / 'report.html'}, "
        f"{out / 'audit-after' / 'report.html'}, {compare}")
    return 0
