"""GPU check for a session that is lent an accelerator: throughput, FLOP utilisation and memory of the default
audit on a LLaVA-1.5-7B-shaped model (random weights: nothing can be downloaded), in bf16 and 4-bit, and a QLoRA
M-SAM step. Prints one short table; finishes in well under 8 minutes on an H100.

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


def llava_config(small: bool, vocab: int, image_token_id: int):
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
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                       vision_feature_layer=-2, vision_feature_select_strategy="default", tie_word_embeddings=False)


def build_model_dir(path: Path, small: bool, device: torch.device) -> Path:
    """A random-weight LLaVA of the real shape, saved with save_pretrained (so it loads like a user's model).
    Initialised on the accelerator when there is one: filling 7B parameters on 16 CPU cores takes minutes."""
    from transformers import CLIPImageProcessor, LlavaForConditionalGeneration, LlavaProcessor

    from mbias.tiny import LLAVA_CHAT_TEMPLATE, build_tokenizer

    tok = build_tokenizer(["<pad>", "<s>", "</s>", "<unk>", "<image>"])
    tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token = "<pad>", "<s>", "</s>", "<unk>"
    cfg = llava_config(small, len(tok), tok.convert_tokens_to_ids("<image>"))
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
    """Counts language-model tokens (and context) of every forward the adapter runs, and its time."""

    def __init__(self, adapter):
        self.adapter, self.tokens, self.attn, self.seconds = adapter, 0, 0, 0.0
        cfg = adapter.model.config
        text = cfg.get_text_config()
        self.layers, self.hidden = text.num_hidden_layers, text.hidden_size
        lm = adapter._parts(adapter.language_modules)[0]
        self.params = sum(p.numel() for p in lm.parameters())
        self._orig = adapter._forward_rows

    @contextlib.contextmanager
    def counting(self):
        def wrapped(prepared, ids, feats, answers, rows, **kw):
            seq = ids.shape[1] + max(int(answers[c].numel()) for _, c in rows)
            self.tokens += len(rows) * seq
            self.attn += len(rows) * seq * seq  # sum over positions of the context each attends to, x2 below
            _sync(self.adapter.device)
            t0 = time.perf_counter()
            out = self._orig(prepared, ids, feats, answers, rows, **kw)
            _sync(self.adapter.device)
            self.seconds += time.perf_counter() - t0
            return out

        self.adapter._forward_rows = wrapped
        try:
            yield self
        finally:
            self.adapter._forward_rows = self._orig

    @property
    def flops(self) -> float:
        # matmuls: 2 * params per token; attention scores and mixing: 2 * 2 * layers * hidden * context / 2 (causal)
        return 2 * self.params * self.tokens + 2 * self.layers * self.hidden * self.attn


def audit(model_dir: Path, device: str, n: int, quant: bool) -> dict:
    from mbias.diagnose.config import AuditConfig, build_probes
    from mbias.models import AdapterConfig, load_adapter
    from mbias.probes import SampleContext
    from mbias.synth import load_synth

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    adapter = load_adapter(str(model_dir), device=device, dtype="bfloat16" if dev.type == "cuda" else "float32",
                           load_in_4bit=quant, config=AdapterConfig(batch_size=64))
    load_s = time.perf_counter() - t0
    probes = build_probes(AuditConfig(probe_config={"mm_shap": {"n_permutations": 10}}))
    ds = load_synth("shapes-p90/test-cp")
    counter = FlopCounter(adapter)
    ctx0 = SampleContext(adapter, adapter.prepare(ds[0]), swap_image=ds[1].image)
    for probe in probes.values():  # warm-up (kernels, allocator)
        probe.run(ctx0)
    _sync(dev)
    with counter.counting():
        t0 = time.perf_counter()
        for i in range(1, n + 1):
            ctx = SampleContext(adapter, adapter.prepare(ds[i]), swap_image=ds[i + 1].image)
            for probe in probes.values():
                probe.run(ctx)
        _sync(dev)
        wall = time.perf_counter() - t0
    return {"samples_per_s": n / wall, "load_s": load_s, "forward_share_of_wall": counter.seconds / wall,
            "tflops_in_forwards": counter.flops / max(counter.seconds, 1e-9) / 1e12,
            "flops_per_sample": counter.flops / n,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None}


def qlora_msam_step(model_dir: Path, device: str, quant: bool) -> dict:
    from mbias.finetune.config import FinetuneConfig
    from mbias.finetune.run import run_finetune
    from mbias.models import LoadOptions

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = Path("/tmp/mbias-gpu-check/msam")
    shutil.rmtree(out, ignore_errors=True)
    run_finetune(str(model_dir), "synth:shapes-p90/train", out, progress=False, load=LoadOptions(
        device=device, dtype="bfloat16" if torch.device(device).type == "cuda" else "float32", load_in_4bit=quant),
        config=FinetuneConfig(recipe="msam", max_steps=4, batch_size=4, max_train_samples=32, lora_r=16))
    times = [json.loads(line)["time"] for line in (out / "training_log.jsonl").read_text().splitlines()]
    return {"s_per_step": (times[-1] - times[1]) / (len(times) - 2),
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny config (a CPU check of the code path)")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--samples", type=int, default=16)
    args = ap.parse_args()
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    dev = torch.device(device)
    t_start = time.perf_counter()
    report = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", "small": args.small}
    report["matmul_peak_tflops"] = matmul_peak(dev, torch.bfloat16 if dev.type == "cuda" else torch.float32,
                                               n=8192 if dev.type == "cuda" else 1024, reps=20 if dev.type == "cuda"
                                               else 3)
    model_dir = build_model_dir(Path("/tmp/mbias-gpu-check/llava-7b-shape" + ("-small" if args.small else "")),
                                args.small, dev)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    report["build_seconds"] = time.perf_counter() - t_start
    report["audit_bf16"] = audit(model_dir, device, args.samples, quant=False)
    quant = dev.type == "cuda"  # bitsandbytes needs CUDA
    # 4-bit matmuls dequantise on the fly and run several times slower: fewer samples keep the check under 8 min
    report["audit_4bit"] = audit(model_dir, device, max(2, args.samples // 4), quant=True) if quant else \
        "skipped (CPU)"
    report["qlora_msam_step"] = qlora_msam_step(model_dir, device, quant)
    report["total_seconds"] = time.perf_counter() - t_start
    OUT.mkdir(exist_ok=True)
    name = "gpu_check" + ("_small_cpu" if args.small or dev.type == "cpu" else "")
    (OUT / f"{name}.json").write_text(json.dumps(report, indent=2, default=str))
    peak = report["matmul_peak_tflops"]
    print(f"device {report['device']}  matmul peak {peak:.3g} TFLOP/s  total {report['total_seconds']:.0f} s "
          f"(model build {report['build_seconds']:.0f} s)")
    print(f"{'run':<14}{'samples/s':>10}{'TFLOP/s':>10}{'of peak':>9}{'peak GiB':>10}")
    for key in ("audit_bf16", "audit_4bit"):
        r = report[key]
        if isinstance(r, dict):
            mem = "-" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.1f}"
            print(f"{key:<14}{r['samples_per_s']:>10.3g}{r['tflops_in_forwards']:>10.3g}"
                  f"{r['tflops_in_forwards'] / peak:>9.0%}{mem:>10}")
        else:
            print(f"{key:<14}{r}")
    q = report["qlora_msam_step"]
    mem = "-" if q["peak_mem_gib"] is None else f"{q['peak_mem_gib']:.1f}"
    print(f"{'qlora msam':<14}{'step ' + format(q['s_per_step'], '.2f') + ' s':>20}{'':>9}{mem:>10}")


if __name__ == "__main__":
    main()
