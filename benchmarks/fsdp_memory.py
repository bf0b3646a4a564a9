"""Memory per process under DDP and FSDP2, LoRA and full tuning, at a few model widths (CPU, two gloo processes).

Each run is its own ``torchrun`` launch (peak RSS only grows within a process): a LLaVA-layout model of the given
width (``mbias.tiny.build_llava``, 4 LLM layers), LoRA on the LLM and projector or every parameter trained, one
``poe``-free plain SFT step through ``StepContext`` (tests/fsdp_step.py's loop) on 4 examples per process. DDP:
torch's ``DistributedDataParallel`` around the whole model; FSDP2: ``fully_shard`` per decoder/encoder layer and
the root. Reported per process: the bytes of parameters, gradients and Adam's state it holds after the step
(exact: what sharding divides), and its peak RSS (everything: Python, torch, activations, the data).

    python benchmarks/fsdp_memory.py                   # writes benchmarks/results/scale/fsdp_memory.{md,json}
    python benchmarks/fsdp_memory.py --widths 256 --tunes lora   # one cell

On a GPU the same comparison is ``benchmarks/fsdp_check.py``'s peak memory per recipe (process 0).
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))


def _state_bytes(model, optimizer) -> int:
    """Bytes of this process's parameters, gradients and optimizer state (a DTensor counts its local shard)."""
    def local(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    total = sum(local(p) for p in model.parameters())
    total += sum(local(p.grad) for p in model.parameters() if p.grad is not None)
    total += sum(local(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim())
    return total


def worker(args) -> None:
    torch.set_num_threads(1)
    from accelerate import Accelerator
    from fsdp_step import shard

    from mbias.data import load_data
    from mbias.finetune.config import FinetuneConfig
    from mbias.finetune.data import EncodedDataset, RecipeCollator
    from mbias.finetune.recipes import RECIPES
    from mbias.finetune.run import _lora_model
    from mbias.finetune.step import StepContext
    from mbias.finetune.trainer import modality_param_groups
    from mbias.models import load_model

    config = FinetuneConfig(output_dir="unused", report_to="none", use_cpu=True)
    accelerator = Accelerator(cpu=True)
    scorer = load_model(args.model, device="cpu")
    if args.tune == "lora":
        model = _lora_model(scorer, config, quantized=False)
    else:
        model = scorer.model.requires_grad_(True)
    modality_of = {n: g for g, names in scorer.parameter_groups(model).items() for n in names}
    if args.mode == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh

        shard(model, init_device_mesh("cpu", (accelerator.num_processes,)))
        wrapped = model
    else:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    model.train()
    optimizer = torch.optim.AdamW(modality_param_groups(model, modality_of, [], 0.0), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    ctx = StepContext(model=wrapped, accelerator=accelerator, scorer=scorer, optimizer=optimizer,
                      lr_scheduler=scheduler, sharded=args.mode == "fsdp2")
    recipe = RECIPES.get("plain")()
    recipe.setup(ctx)
    examples = load_data("synth:shapes-p90/train", max_samples=8).examples
    data = EncodedDataset(scorer, examples)
    rank = accelerator.process_index
    batch = RecipeCollator(scorer, recipe.batch_spec())([data[i] for i in range(4 * rank, 4 * rank + 4)])
    recipe.training_step(wrapped, ctx.to_device(batch))
    optimizer.step()
    row = {"state_mib": _state_bytes(model, optimizer) / 2**20,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "params_total": sum(p.numel() for p in scorer.model.parameters()) if args.mode == "ddp" else None}
    rows = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(rows, row)
    if rank == 0:
        Path(args.result).write_text(json.dumps(rows))


def by_cell(table: list[dict]) -> dict:
    """The rows as {"WIDTH TUNE": {"ddp": row, "fsdp2": row}} (what the docs' claim tags address)."""
    out: dict = {}
    for row in table:
        out.setdefault(f"{row['width']} {row['tune']}", {})[row["mode"]] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="256,512,1024")
    ap.add_argument("--tunes", default="lora,full")
    ap.add_argument("--out", default=str(HERE / "results" / "scale"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--tune", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    from mbias.provenance import results_header
    from mbias.tiny import build_llava

    t0 = time.time()
    table = []
    for width in map(int, args.widths.split(",")):
        model = build_llava(Path("/tmp/mbias-fsdp-memory") / f"llava-{width}", hidden=width, text_layers=4,
                            vision_hidden=width // 2)
        for tune in args.tunes.split(","):
            for mode in ("ddp", "fsdp2"):
                result = Path("/tmp/mbias-fsdp-memory") / f"{width}-{tune}-{mode}.json"
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", 0))
                    port = sock.getsockname()[1]
                proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                       "--master_port", str(port), __file__, "--worker", "--model", str(model),
                                       "--mode", mode, "--tune", tune, "--result", str(result)],
                                      capture_output=True, text=True, timeout=900)
                if proc.returncode != 0:
                    raise SystemExit(proc.stderr[-3000:])
                rows = json.loads(result.read_text())
                cell = {"width": width, "tune": tune, "mode": mode,
                        "state_mib": max(r["state_mib"] for r in rows),
                        "peak_rss_mib": max(r["peak_rss_mib"] for r in rows),
                        "params_total": rows[0]["params_total"]}
                table.append(cell)
                print(json.dumps(cell), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header, provenance = results_header(wall_seconds=time.time() - t0)
    lines = [*header, "", "Memory per process, two processes on CPU (gloo), after one SFT step with AdamW: the bytes of "
             "parameters, gradients and optimizer state each process holds (what sharding divides; a DTensor counts "
             "its shard), and its peak RSS (all of it: Python, torch, activations, data). The larger of the two "
             "processes. LLaVA layout, 4 LLM layers, the LLM `width` wide, the vision tower half as wide.", "",
             "| width | tune | DDP state MiB | FSDP2 state MiB | FSDP2 / DDP | DDP peak RSS MiB | FSDP2 peak RSS MiB |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for width in sorted({c["width"] for c in table}):
        for tune in args.tunes.split(","):
            d = next(c for c in table if c["width"] == width and c["tune"] == tune and c["mode"] == "ddp")
            f = next(c for c in table if c["width"] == width and c["tune"] == tune and c["mode"] == "fsdp2")
            lines.append(f"| {width} | {tune} | {d['state_mib']:.1f} | {f['state_mib']:.1f} | "
                         f"{f['state_mib'] / d['state_mib']:.2f} | {d['peak_rss_mib']:.0f} | {f['peak_rss_mib']:.0f} |")
    (out / "fsdp_memory.md").write_text("\n".join(lines) + "\n")
    (out / "fsdp_memory.json").write_text(json.dumps({"provenance": provenance, "rows": table,
                                                      "by_cell": by_cell(table)}, indent=2))
    print("\n".join(lines[len(header):]))


if __name__ == "__main__":
    main()
