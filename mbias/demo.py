"""``mbias demo``: the mission on embedded defaults, on CPU, in a few minutes.

1. build (or load from the cache) ``zoo:shapes-p90``, a tiny LLaVA trained with a 90% language prior;
2. audit it with every probe on the counter-prior split, where following the prior is always wrong;
3. fine-tune it with a balancing recipe and audit the result;
4. write the reports and a before/after comparison, and print where they are with the verdicts.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

logger = logging.getLogger(__name__)

MODEL = "zoo:shapes-p90"
AUDIT_DATA = "synth:shapes-p90/test-cp"
TRAIN_DATA = "synth:shapes-p90/train"


def run_demo(args) -> int:
    from mbias.diagnose.cli import verdict_line
    from mbias.diagnose.config import AuditConfig
    from mbias.diagnose.runner import run_audit
    from mbias.zoo import zoo_model_path

    out = Path(args.out)
    progress = not args.no_progress
    n = 40 if args.quick else 150
    t0 = time.perf_counter()
    print(f"[1/4] zoo model {MODEL} (a tiny LLaVA trained from scratch with a 90% language prior; cached after "
          "the first run)", flush=True)
    zoo_model_path(MODEL.removeprefix("zoo:"), progress=progress)

    print(f"[2/4] auditing it on {AUDIT_DATA} ({n} samples, all probes)", flush=True)
    config = AuditConfig(max_samples=n, probe_config={"mm_shap": {"n_permutations": 10}})
    before = run_audit(MODEL, AUDIT_DATA, out / "audit-before", config=config, progress=progress, overwrite=True)
    print("      " + verdict_line(before, str(out / "audit-before" / "report.html")), flush=True)

    finetuned = _finetune(out, args.quick, progress)
    if finetuned is None:
        print(f"done in {time.perf_counter() - t0:.0f} s; open {out / 'audit-before' / 'report.html'}")
        return 0
    print(f"[4/4] auditing the fine-tuned model on {AUDIT_DATA}", flush=True)
    after = run_audit(MODEL, AUDIT_DATA, out / "audit-after", config=config, progress=progress, overwrite=True,
                      load=_load_with_adapter(finetuned))
    print("      " + verdict_line(after, str(out / "audit-after" / "report.html")), flush=True)
    from mbias.reports import render_compare

    compare = render_compare(out / "audit-before", out / "audit-after", out / "compare.html")
    acc = (before["accuracy"], after["accuracy"])
    print(f"counter-prior accuracy {acc[0]:.2f} -> {acc[1]:.2f}; language share "
          f"{before['verdict']['language_share']:.2f} -> {after['verdict']['language_share']:.2f}")
    print(f"done in {time.perf_counter() - t0:.0f} s; open {compare}")
    return 0


def _load_with_adapter(path):
    from mbias.diagnose.runner import LoadOptions

    return LoadOptions(adapter=str(path))


def _finetune(out: Path, quick: bool, progress: bool):
    """Fine-tune with the recipe the demo showcases; None while fine-tuning is not available."""
    try:
        from mbias.finetune.demo import demo_finetune
    except ImportError:
        logger.info("fine-tuning is not part of this build; the demo stops after the audit")
        return None
    print("[3/4] fine-tuning with a balancing recipe", flush=True)
    return demo_finetune(MODEL, TRAIN_DATA, out / "finetune", quick=quick, progress=progress)
