"""Every recipe through the real path under FSDP2 on GPUs: ``mbias.finetune``'s Trainer, launched by accelerate with
``benchmarks/configs/accelerate/fsdp2.yaml``, bf16, LoRA and ``--tune full``, a few steps each on a tiny LLaVA (the
exactness on shards is tests/test_fsdp.py's, on CPU; this checks the Trainer + accelerate wiring, saving
included). One process loops over the recipes, so the launch and CUDA start are paid once.

    python -c "from mbias.tiny import build_tiny; build_tiny('llava', '/tmp/mbias-fsdp/llava')"
    accelerate launch --config_file benchmarks/configs/accelerate/fsdp2.yaml --num_processes $(nvidia-smi -L | wc -l) \
        benchmarks/fsdp_check.py --model /tmp/mbias-fsdp/llava --out "$OUT"

Run by ``benchmarks/gpu_check.sh``. Writes ``fsdp_check.json`` (per recipe and tune: ok, seconds, peak GPU memory
of process 0, the error's last line) and prints a table. A recipe that fails here is marked; it is not retried.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

RUNS = [("plain", "plain", {}), ("poe", "poe", {}), ("lmh", "lmh", {}), ("mdpo", "mdpo", {}), ("sam", "sam", {}),
        ("msam", "msam", {}), ("miles", "miles", {"every_steps": 1}), ("mnl", "mnl", {}), ("cggm", "cggm", {}),
        ("ogm_ge", "ogm_ge", {})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--tunes", default="lora,full")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from mbias.finetune.config import FinetuneConfig
    from mbias.finetune.run import train

    gpu = torch.cuda.is_available()  # without one: the same loop in float32, one process (a check of the script)
    report, rank0 = {}, True
    out = Path(args.out)
    for tune in args.tunes.split(","):
        for label, recipe, settings in RUNS:
            if tune == "full" and recipe in ("poe", "lmh", "mdpo"):  # they compare with the adapters disabled
                report[f"{label} {tune}"] = {"ok": None, "why": "needs tune: lora (the frozen base)"}
                continue
            key = f"{label} {tune}"
            t0 = time.perf_counter()
            try:
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                config = FinetuneConfig(output_dir="unused", recipe=recipe, recipe_config=settings, tune=tune,
                                        max_steps=args.steps, per_device_train_batch_size=4, eval_samples=8,
                                        max_train_samples=64, bf16=gpu, use_cpu=not gpu, report_to="none",
                                        logging_steps=1,
                                        learning_rate=1e-3)
                trainer, folder = train(args.model, "synth:shapes-p90/train", f"/tmp/mbias-fsdp/out/{key}",
                                        config=config, progress=False)
                rank0 = trainer.is_world_process_zero()
                loss = [e["loss"] for e in trainer.state.log_history if "loss" in e]
                saved = any(folder.glob("*.safetensors"))
                report[key] = {"ok": bool(saved and loss and all(map(_finite, loss))), "fsdp": trainer.is_fsdp_enabled,
                               "saved": saved, "losses": loss, "seconds": round(time.perf_counter() - t0, 1),
                               "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available()
                               else None}
            except Exception as exc:  # report and go on: one recipe's failure must not hide the others'
                report[key] = {"ok": False, "why": f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300]}"
                               if str(exc).strip() else type(exc).__name__, "seconds": round(time.perf_counter() - t0, 1)}
            if rank0:
                out.mkdir(parents=True, exist_ok=True)
                (out / "fsdp_check.json").write_text(json.dumps(report, indent=2, default=str))
    if rank0:
        print(f"{'recipe':<16}{'ok':>6}{'s':>7}{'peak GiB':>10}  note")
        for key, r in report.items():
            peak = "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.2f}"
            print(f"{key:<16}{str(r['ok']):>6}{r.get('seconds', 0):>7.1f}{peak:>10}  {r.get('why', '')}")


def _finite(x) -> bool:
    return x == x and abs(x) != float("inf")


if __name__ == "__main__":
    main()
