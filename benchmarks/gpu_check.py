"""GPU check for a session that is lent an accelerator: throughput, FLOP utilisation and memory of the default
audit on a LLaVA-1.5-7B-shaped model (random weights: nothing can be downloaded), in bf16 and 4-bit; the same
model split by accelerate's device map over all visible GPUs (on one GPU: part of it offloaded to the CPU), with
its scores compared to the single-device run's; the real-shape cost benchmark (``audit_cost.py``: the default
audit per probe against each probe's minimum, at the LLaVA-1.5 shape and 7B width, with tokens/s and the fraction
of the bf16 matmul peak); a QLoRA M-SAM step; and QLoRA steps of every recipe on a
7B-wide, 2-layer model. Prints one short table; each stage adds to the JSON as it finishes, so a run cut short by
the time limit still reports what it did.

    python benchmarks/gpu_check.py                 # on the GPU machine
    python benchmarks/gpu_check.py --small --cpu   # the same code path on a tiny config, on CPU (CI-style check)

FLOPs are counted from the tokens the language model processes in the scoring forward passes (2 x parameters per
token for the matrix multiplies, plus attention's 2 x layers x hidden x context per token, causal); the achieved
rate over the time spent in those passes is compared with a measured bf16 matmul peak on the same card. The vision
tower runs once per example and is left out of both, and generation (pdm) is not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import time
from pathlib import Path

import torch

OUT = Path(__file__).parent / "results"


def matmul_peak(device, dtype, n: int = 8192, reps: int = 20) -> float:
    """Achieved TFLOP/s of a large square matmul: the practical ceiling for this card and dtype."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def llava_config(small: bool, vocab: int, image_token_id: int, text_layers: int | None = None):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if small:
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=48, patch_size=12, projection_dim=32)
        text = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096)
    else:  # llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 + Vicuna-7B
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768)
        text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
    if text_layers:
        text.num_hidden_layers = text_layers
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                       vision_feature_layer=-2, vision_feature_select_strategy="default", tie_word_embeddings=False)


def build_model_dir(path: Path, small: bool, device: torch.device, text_layers: int | None = None) -> Path:
    """A random-weight LLaVA of the real shape, saved with save_pretrained (so it loads like a user's model).
    Initialised on the accelerator when there is one: filling 7B parameters on 16 CPU cores takes minutes."""
    from transformers import CLIPImageProcessor, LlavaForConditionalGeneration, LlavaProcessor

    from mbias.tiny import LLAVA_CHAT_TEMPLATE, build_tokenizer

    tok = build_tokenizer(["<pad>", "<s>", "</s>", "<unk>", "<image>"])
    tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token = "<pad>", "<s>", "</s>", "<unk>"
    cfg = llava_config(small, len(tok), tok.convert_tokens_to_ids("<image>"), text_layers)
    size = cfg.vision_config.image_size
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": size},
                                                             crop_size={"height": size, "width": size}),
                          tokenizer=tok, patch_size=cfg.vision_config.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=LLAVA_CHAT_TEMPLATE)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(cfg)
    model = model.to_empty(device=device).to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


class FlopCounter:
    """Counts language-model tokens (and context) of every forward the scorer runs, and its time."""

    def __init__(self, scorer):
        self.scorer, self.tokens, self.attn, self.seconds = scorer, 0, 0, 0.0
        cfg = scorer.model.config
        text = cfg.get_text_config()
        self.layers, self.hidden = text.num_hidden_layers, text.hidden_size
        lm = scorer._parts(scorer.language_modules)[0]
        self.params = sum(p.numel() for p in lm.parameters())
        self._orig = scorer._forward_rows

    @contextlib.contextmanager
    def counting(self):
        def wrapped(prepared, ids, feats, answers, rows, **kw):
            seq = ids.shape[1] + max(int(answers[c].numel()) for _, c in rows)
            self.tokens += len(rows) * seq
            self.attn += len(rows) * seq * seq  # sum over positions of the context each attends to, x2 below
            _sync(self.scorer.device)
            t0 = time.perf_counter()
            out = self._orig(prepared, ids, feats, answers, rows, **kw)
            _sync(self.scorer.device)
            self.seconds += time.perf_counter() - t0
            return out

        self.scorer._forward_rows = wrapped
        try:
            yield self
        finally:
            self.scorer._forward_rows = self._orig

    @property
    def flops(self) -> float:
        # matmuls: 2 * params per token; attention scores and mixing: 2 * 2 * layers * hidden * context / 2 (causal)
        return 2 * self.params * self.tokens + 2 * self.layers * self.hidden * self.attn


def audit(model_dir: Path, device: str, n: int, quant: bool, placement: dict | None = None) -> dict:
    """Probes on ``n`` samples; ``placement``: LoadOptions' device_map / max_memory / offload_folder."""
    from mbias.diagnose.config import AuditConfig, build_probes
    from mbias.models import LoadOptions, ScoringConfig, load_model
    from mbias.probes import SampleContext
    from mbias.synth import load_synth

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    opts = LoadOptions(device="auto" if placement else device, dtype="bfloat16" if dev.type == "cuda" else "float32",
                       load_in_4bit=quant, **(placement or {}))
    scorer = load_model(str(model_dir), opts, config=ScoringConfig(batch_size=64))
    load_s = time.perf_counter() - t0
    probes = build_probes(AuditConfig(probe_config={"mm_shap": {"n_permutations": 10}}))
    ds = load_synth("shapes-p90/test-cp")
    counter = FlopCounter(scorer)
    ctx0 = SampleContext(scorer, scorer.prepare(ds[0]), swap_image=ds[1].image)
    for probe in probes.values():  # warm-up (kernels, allocator)
        probe.run(ctx0)
    _sync(dev)
    with counter.counting():
        t0 = time.perf_counter()
        for i in range(1, n + 1):
            ctx = SampleContext(scorer, scorer.prepare(ds[i]), swap_image=ds[i + 1].image)
            for probe in probes.values():
                probe.run(ctx)
        _sync(dev)
        wall = time.perf_counter() - t0
    # the full-input answer log-prob of the first samples, to compare placements
    scores = [float(scorer.score(scorer.prepare(ds[i]))[0]) for i in range(1, 5)]
    placed = getattr(scorer.model, "hf_device_map", None)
    out = {"samples_per_s": n / wall, "load_s": load_s, "forward_share_of_wall": counter.seconds / wall,
           "tflops_in_forwards": counter.flops / max(counter.seconds, 1e-9) / 1e12,
           "flops_per_sample": counter.flops / n, "scores": scores,
           "placement": sorted({str(d) for d in placed.values()}) if placed else [str(scorer.device)],
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None}
    del scorer
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def sharding(model_dir: Path, dev: torch.device) -> dict:
    """accelerate's placement for the split audit: every visible GPU, or (one GPU, or none) part of the model on
    the GPU and the rest on the CPU and disk, so that the split path runs on any machine."""
    size = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    n_gpus = torch.cuda.device_count() if dev.type == "cuda" else 0
    if n_gpus > 1:
        return {"device_map": "auto"}
    memory = {"0": f"{size * 0.6 / 2**30:.2f}GiB", "cpu": "200GiB"} if n_gpus else {"cpu": str(int(size * 0.9))}
    return {"device_map": "auto", "max_memory": memory, "offload_folder": "/tmp/mbias-gpu-check/offload"}


def qlora_steps(model_dir: Path, device: str, quant: bool, recipe: str, steps: int = 4) -> dict:
    from mbias.finetune.config import FinetuneConfig
    from mbias.finetune.run import run_finetune
    from mbias.models import LoadOptions

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = Path(f"/tmp/mbias-gpu-check/ft-{recipe}")
    shutil.rmtree(out, ignore_errors=True)
    run_finetune(str(model_dir), "synth:shapes-p90/train", out, progress=False, load=LoadOptions(
        device=device, dtype="bfloat16" if torch.device(device).type == "cuda" else "float32", load_in_4bit=quant),
        config=FinetuneConfig(recipe=recipe, max_steps=steps, per_device_train_batch_size=4, max_train_samples=32, eval_samples=16,
                              lora_r=16, recipe_config={"every_steps": 2} if recipe == "miles" else {}))
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    times = [e["time"] for e in log]
    return {"s_per_step": (times[-1] - times[1]) / (len(times) - 2), "last_loss": log[-1]["loss"],
            "finite": all(math.isfinite(e["loss"]) for e in log),
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}


def qlora_every_recipe(model_dir: Path, device: str, quant: bool) -> dict:
    """A few QLoRA steps of every recipe; a recipe that fails is reported with its error, and the rest still run."""
    from mbias.finetune.recipes import RECIPES

    out = {}
    for name in RECIPES.names():
        try:
            out[name] = qlora_steps(model_dir, device, quant, name)
        except Exception as exc:  # noqa: BLE001 (a check reports every failure, then goes on)
            out[name] = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return out


def real_shape_cost(dev: torch.device, small: bool, peak: float, samples: int = 2) -> dict:
    """``audit_cost.py`` at the LLaVA-1.5 shape (7B width; tiny with --small): the default audit's LLM tokens per
    sample, per probe against its minimum, tokens/s and the fraction of the bf16 matmul peak."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from audit_cost import run_shapes

    res = run_shapes(["llava-1.5"], "tiny" if small else "7b", samples, str(dev),
                     peak_tflops=peak if dev.type == "cuda" else None)["llava-1.5"]
    s = res["summary"]
    return {"build_seconds": res["build_seconds"], "samples": samples,
            **{k: s.get(k) for k in ("llm_tokens", "sum_of_probe_minima", "ratio_to_sum_of_minima", "audit_minimum",
                                     "ratio_to_audit_minimum", "vision_tokens", "vision_minimum", "seconds",
                                     "tokens_per_second", "tflops", "fraction_of_bf16_peak", "prefix_cache",
                                     "batch_rows")},
            "per_probe": {k: {kk: v.get(kk) for kk in ("forward_passes", "llm_tokens", "min_llm_tokens", "ratio",
                                                        "seconds", "peak_memory_mib")}
                          for k, v in s["stages"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny config (a CPU check of the code path)")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--out", default=str(OUT), help="folder for the JSON report (default: benchmarks/results)")
    args = ap.parse_args()
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    dev = torch.device(device)
    t_start = time.perf_counter()
    name = "gpu_check" + ("_small_cpu" if args.small or dev.type == "cpu" else "")
    path = Path(args.out) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", "small": args.small,
              "gpus": torch.cuda.device_count() if dev.type == "cuda" else 0}

    def stage(key: str, fn) -> None:
        report[key] = fn()
        report["total_seconds"] = time.perf_counter() - t_start
        path.write_text(json.dumps(report, indent=2, default=str))

    stage("matmul_peak_tflops", lambda: matmul_peak(dev, torch.bfloat16 if dev.type == "cuda" else torch.float32,
                                                    n=8192 if dev.type == "cuda" else 1024,
                                                    reps=20 if dev.type == "cuda" else 3))
    model_dir = build_model_dir(Path("/tmp/mbias-gpu-check/llava-7b-shape" + ("-small" if args.small else "")),
                                args.small, dev)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    report["build_seconds"] = time.perf_counter() - t_start
    stage("audit_bf16", lambda: audit(model_dir, device, args.samples, quant=False))
    # the real-shape benchmark (issue 28): about a minute at 7B width; left out when the audit ran long, so the
    # stages after it still fit the time limit
    stage("real_shape_cost", lambda: real_shape_cost(dev, args.small, report["matmul_peak_tflops"],
                                                     samples=1 if args.small else 2)
          if time.perf_counter() - t_start < 200 else "skipped (over 200 s already spent)")
    quant = dev.type == "cuda"  # bitsandbytes needs CUDA
    # 4-bit matmuls dequantise on the fly and run several times slower: fewer samples keep the check short
    stage("audit_4bit", lambda: audit(model_dir, device, max(2, args.samples // 4), quant=True) if quant else
          "skipped (CPU)")
    stage("audit_sharded", lambda: audit(model_dir, device, max(2, args.samples // 4), quant=False,
                                         placement=sharding(model_dir, dev)))
    report["audit_sharded"]["max_abs_diff_vs_one_device"] = max(
        abs(a - b) for a, b in zip(report["audit_sharded"]["scores"], report["audit_bf16"]["scores"], strict=True))
    stage("qlora_msam_step", lambda: qlora_steps(model_dir, device, quant, "msam"))
    shallow = build_model_dir(Path("/tmp/mbias-gpu-check/llava-7b-wide-2-layers" + ("-small" if args.small else "")),
                              args.small, dev, text_layers=2)
    stage("qlora_every_recipe", lambda: qlora_every_recipe(shallow, device, quant))
    _print(report)


def _print(report: dict) -> None:
    peak = report["matmul_peak_tflops"]
    print(f"device {report['device']} x{max(1, report['gpus'])}  matmul peak {peak:.3g} TFLOP/s  total "
          f"{report['total_seconds']:.0f} s (model build {report['build_seconds']:.0f} s)")
    print(f"{'run':<15}{'samples/s':>10}{'TFLOP/s':>10}{'of peak':>9}{'peak GiB':>10}  placement")
    for key in ("audit_bf16", "audit_4bit", "audit_sharded"):
        r = report[key]
        if isinstance(r, dict):
            mem = "-" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.1f}"
            print(f"{key:<15}{r['samples_per_s']:>10.3g}{r['tflops_in_forwards']:>10.3g}"
                  f"{r['tflops_in_forwards'] / peak:>9.0%}{mem:>10}  {','.join(r['placement'])}")
        else:
            print(f"{key:<15}{r}")
    print(f"sharded scores vs one device: max |diff| {report['audit_sharded']['max_abs_diff_vs_one_device']:.2g}")
    rc = report.get("real_shape_cost")
    if isinstance(rc, dict):
        frac = "" if rc.get("fraction_of_bf16_peak") is None else \
            f", {rc['tflops']:.3g} TFLOP/s = {rc['fraction_of_bf16_peak']:.0%} of bf16 peak"
        print(f"real shape (LLaVA-1.5, 576 image tokens): {rc['tokens_per_second']:.4g} LLM tokens/s{frac}; "
              f"{rc['llm_tokens']:.4g} tokens/sample = {rc['ratio_to_sum_of_minima']:.2f}x the probes' minima; "
              f"prefix cache {'on' if rc.get('prefix_cache') else 'off'}, {rc.get('batch_rows')} rows per batch "
              "(auto)")
        for name, p in rc["per_probe"].items():
            ratio = "-" if p.get("ratio") is None else f"{p['ratio']:.2f}x"
            print(f"  {name:<14}{p['forward_passes']:>6.0f} passes {p['llm_tokens']:>12.4g} tokens  min "
                  f"{p.get('min_llm_tokens') or 0:>10.4g}  {ratio:>7}  {p['seconds']:.2f} s")
    for name, q in [("msam 32 lyr", report["qlora_msam_step"]), *report["qlora_every_recipe"].items()]:
        if isinstance(q, str):
            print(f"qlora {name:<12}{q}")
            continue
        mem = "-" if q["peak_mem_gib"] is None else f"{q['peak_mem_gib']:.1f}"
        print(f"qlora {name:<12}{'step ' + format(q['s_per_step'], '.2f') + ' s':>16}  loss "
              f"{q['last_loss']:.3g}{'' if q['finite'] else ' (NOT FINITE)'}{mem:>10}")


if __name__ == "__main__":
    main()
