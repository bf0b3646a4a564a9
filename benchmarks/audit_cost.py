"""What the default audit costs per sample at the shapes users run, probe by probe, against the fewest tokens each
probe's measure needs.

Models with the real families' geometry (``benchmarks/real_shapes.py``: LLaVA-1.5 at 336 px, 576 image tokens;
Qwen2-VL at 448 and 896 px, 256 and 1024 image tokens; SmolVLM's tiling, 1377 image tokens) at a tiny width for a
CPU, or ``--width 7b`` on a GPU; POPE-style yes/no questions of 18-47 question tokens. The audit runs as ``mbias
audit`` runs it (prepare, the full-input outcome, then every default probe in order on one shared sample context),
and everything is counted by instrumenting, not estimated:

- forward passes and tokens through the language model: a forward pre-hook on the language model counts every
  call and its batch x length (padding included: it is computed); generation's decode steps count one token per
  row each;
- tokens through the vision tower: a hook on its patch embedding counts the patches of every call;
- seconds, and peak memory over the probe (CUDA: the allocator's peak; CPU: the process's resident set, sampled
  every 5 ms, above what it was when the probe started).

The minimum. A causal language model's activations at a position depend only on the tokens up to it, so a set of
input rows needs, at the least, one token's computation per distinct *prefix*: the size of the prefix trie of the
rows (a KV cache that reuses every shared prefix reaches it). Each probe's minimum is the trie of the rows its
measure asks for, identified by token ids and, at image positions, by the feature row fed there (a random
projection of it); rows it takes from outcomes an earlier probe computed count for it too, so each minimum stands
alone. The audit's minimum is the trie of all of them together. For ``mm_shap`` the rows are the coalitions its
estimator asks for at the configured tolerance (a different estimator could need fewer; this is the minimum for
the estimator mbias runs). The vision minimum is one pass per distinct image (the example's and each baseline's).
Spent / minimum is what prefix reuse, padding and repeated rows would save at most.

The scorer runs as a user's does: ``prefix_cache`` on (``mbias/models/prefix.py``: shared prefixes computed once)
and ``batch_size: auto``; ``--no-prefix-cache`` scores every
variant in full, for the before/after.

    python benchmarks/audit_cost.py [--shapes llava-1.5,qwen2-vl-448,qwen2-vl-896,smolvlm] [--samples 2]
    python benchmarks/audit_cost.py --samples 4 --no-prefix-cache --name audit_cost_no_prefix_cache
    python benchmarks/audit_cost.py --width 7b --device cuda --shapes llava-1.5 --samples 2   # GPU (gpu_check.sh)

Writes benchmarks/results/cost/audit_cost.{json,md} (``--width 7b``: audit_cost_7b.{json,md}, or under --out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from mbias.models.prefix import token_identities, trie_size

sys.path.insert(0, str(Path(__file__).resolve().parent))

OUT = Path(__file__).parent / "results" / "cost"
STAGES = ("prepare", "full outcome")  # what the audit does before the probes


# ------------------------------------------------------------------------------------------------------------------
# the minimum: prefix tries
def row_identities(prepared, ids: torch.Tensor, feats: torch.Tensor | None, tails: list[torch.Tensor]) -> list:
    """Token identities of scored rows (``mbias.models.prefix.token_identities``), answer tokens appended."""
    prompt = token_identities(prepared, ids, feats)
    return [np.concatenate([prompt[v], tail.cpu().numpy().astype(np.int64)]) for v, tail in enumerate(tails)]


# ------------------------------------------------------------------------------------------------------------------
# instrumentation
class Meter:
    """Forward hooks on the language model and the vision tower, and wrappers on the scorer's row scoring and
    generation that record which rows each stage asked for."""

    def __init__(self, scorer):
        from mbias.probes.base import SampleContext

        self.scorer, self.stage = scorer, "prepare"
        self.llm = scorer._parts(scorer.language_modules)[0]
        self.vision = scorer._parts(scorer.vision_modules)[0]
        text = scorer.model.config.get_text_config()
        self.layers, self.hidden = text.num_hidden_layers, text.hidden_size
        self.llm_params = sum(p.numel() for p in self.llm.parameters())
        self.vision_params = sum(p.numel() for p in self.vision.parameters())
        self.reset()
        self._handles = [self.llm.register_forward_pre_hook(self._llm_hook, with_kwargs=True),
                         self.vision.register_forward_pre_hook(self._vision_pre, with_kwargs=True)]
        embed = next((m for name, m in self.vision.named_modules()
                      if name.split(".")[-1] in ("embeddings", "patch_embed")), self.vision)
        self._handles.append(embed.register_forward_hook(self._vision_tokens))
        self._orig = {"_forward_rows": scorer._forward_rows, "generate_inputs": scorer.generate_inputs}
        scorer._forward_rows = self._forward_rows
        scorer.generate_inputs = self._generate_inputs
        self._ctx_cls = SampleContext
        self._orig_outcomes, self._orig_compute = SampleContext.outcomes, SampleContext._compute
        meter = self

        def outcomes(ctx, variants):
            meter.requested[meter.stage].update(variants)
            return meter._orig_outcomes(ctx, variants)

        def compute(ctx, prepared, variants):
            meter.variants = list(variants)
            try:
                return meter._orig_compute(ctx, prepared, variants)
            finally:
                meter.variants = None

        SampleContext.outcomes, SampleContext._compute = outcomes, compute
        self.variants = None

    def reset(self):
        self.calls = defaultdict(int)
        self.tokens = defaultdict(int)
        self.real_tokens = defaultdict(int)
        self.flops = defaultdict(float)
        self.vision_calls = defaultdict(int)
        self.vision_tokens = defaultdict(int)
        self.rows = defaultdict(list)  # stage -> token-identity rows it computed
        self.rows_by_key = {}  # outcome key -> its rows (whoever computed them)
        self.requested = defaultdict(set)  # stage -> outcome keys it asked the context for
        self.images = {}  # vision input hash -> patches
        self._pending = None

    def close(self):
        for h in self._handles:
            h.remove()
        self.scorer._forward_rows = self._orig["_forward_rows"]
        self.scorer.generate_inputs = self._orig["generate_inputs"]
        self._ctx_cls.outcomes, self._ctx_cls._compute = self._orig_outcomes, self._orig_compute

    # hooks
    def _llm_hook(self, module, args, kwargs):
        x = kwargs.get("inputs_embeds")
        if x is None:
            x = kwargs.get("input_ids", args[0] if args else None)
        b, n = int(x.shape[0]), int(x.shape[1])
        mask = kwargs.get("attention_mask")
        kv = int(mask.shape[-1]) if torch.is_tensor(mask) and mask.dim() >= 2 else n
        self.calls[self.stage] += 1
        self.tokens[self.stage] += b * n
        real = int(mask[..., -n:].sum()) if torch.is_tensor(mask) and mask.dim() == 2 else b * n
        self.real_tokens[self.stage] += real
        # matmuls 2 x params per token; attention scores and mixing 4 x layers x hidden x context per token,
        # halved over a causal square (a prompt pass), not for a decode step (it attends to the whole cache)
        ctx = kv / 2 if n == kv else kv
        self.flops[self.stage] += 2 * self.llm_params * b * n + 4 * self.layers * self.hidden * b * n * ctx

    def _vision_pre(self, module, args, kwargs):
        x = kwargs.get("pixel_values", args[0] if args else None)
        key = float((x.double().flatten()[:: max(1, x.numel() // 4096)]).sum()) if torch.is_tensor(x) else None
        self._pending = (key, int(x.shape[0]) if torch.is_tensor(x) and x.dim() >= 4 else 1)
        self.vision_calls[self.stage] += 1

    def _vision_tokens(self, module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        n = int(out.shape[:-1].numel())
        self.vision_tokens[self.stage] += n
        self.flops[self.stage] += 2 * self.vision_params * n
        if self._pending is not None:
            key, _ = self._pending
            self.images[key] = n
            self._pending = None

    # recorded rows
    def _forward_rows(self, prepared, ids, feats, answers, rows, **kw):
        sel = [v for v, _ in rows]
        # what the measure needs: the logits that predict each answer token, i.e. the prompt and every answer token
        # but the last (the scorer feeds the last one too: that shows up as spent, not as needed)
        tails = [answers[c][:-1] for _, c in rows]
        recorded = row_identities(prepared, ids[sel], None if feats is None else feats[sel], tails)
        self.rows[self.stage].extend(recorded)
        if self.variants is not None:
            for (v, _), row in zip(rows, recorded, strict=True):
                self.rows_by_key.setdefault(self.variants[v], []).append(row)
        return self._orig["_forward_rows"](prepared, ids, feats, answers, rows, **kw)

    def _generate_inputs(self, prepared, ids, feats, max_new_tokens=None):
        text = self._orig["generate_inputs"](prepared, ids, feats, max_new_tokens)
        new = torch.tensor(self.scorer.tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)
        row = row_identities(prepared, ids[:1], None if feats is None else feats[:1], [new[:-1]])
        self.rows[self.stage].extend(row)
        if self.variants is not None:
            self.rows_by_key.setdefault(self.variants[0], []).extend(row)
        return text

    def needed_rows(self, stage: str) -> list:
        """The rows a stage's measure asks for: those it computed and those of outcomes it took from the context."""
        rows = list(self.rows[stage])
        computed_here = {id(r) for r in rows}
        for key in self.requested[stage]:
            rows += [r for r in self.rows_by_key.get(key, []) if id(r) not in computed_here]
        return rows


class PeakMemory:
    """Peak memory above the start of a block: CUDA's allocator peak, or the resident set sampled on a CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    @contextlib.contextmanager
    def measure(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
            yield self
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - start
            return
        import psutil

        proc = psutil.Process()
        start = proc.memory_info().rss
        top = [start]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.005):
                top[0] = max(top[0], proc.memory_info().rss)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.peak = max(0, max(top[0], proc.memory_info().rss) - start)


# ------------------------------------------------------------------------------------------------------------------
def audit_shape(scorer, examples, probe_config: dict | None = None, device: str | torch.device = "cpu") -> dict:
    """The default audit on ``examples`` with every stage counted; per sample and per stage."""
    from mbias.diagnose.config import AuditConfig, build_probes
    from mbias.probes import SampleContext
    from mbias.variants import KEEP

    dev = torch.device(device)
    probes = build_probes(AuditConfig(probe_config=probe_config or {}))
    meter = Meter(scorer)
    mem = PeakMemory(dev)
    samples = []
    seconds, peak = {}, {}

    @contextlib.contextmanager
    def stage(name):
        meter.stage = name
        with mem.measure():
            _sync(dev)
            t0 = time.perf_counter()
            yield
            _sync(dev)
            seconds[name] = time.perf_counter() - t0
        peak[name] = mem.peak

    try:
        for i, ex in enumerate(examples):
            meter.reset()
            seconds.clear()
            peak.clear()
            with torch.no_grad():
                with stage("prepare"):
                    prepared = scorer.prepare(ex)
                    ctx = SampleContext(scorer, prepared, swap_image=examples[(i + 1) % len(examples)].image)
                with stage("full outcome"):
                    ctx.outcome(KEEP, KEEP)
                records = {}
                for name, probe in probes.items():
                    with stage(name):
                        records[name] = probe.run(ctx)
            stages = list(STAGES) + list(probes)
            per = {}
            for s in stages:
                per[s] = {"seconds": seconds[s], "peak_memory_mib": peak[s] / 2**20, "forward_passes": meter.calls[s],
                          "llm_tokens": meter.tokens[s], "llm_tokens_unpadded": meter.real_tokens[s],
                          "vision_passes": meter.vision_calls[s], "vision_tokens": meter.vision_tokens[s],
                          "flops": meter.flops[s], "rows": len(meter.rows[s])}
                if s != "prepare":
                    per[s]["min_llm_tokens"] = trie_size(meter.needed_rows(s))
            # the full outcome is the audit's own (the record's prediction); the probes that read it count it too
            everything = [r for s in stages for r in meter.needed_rows(s)]
            uniq = {id(r): r for r in everything}
            mm = records.get("mm_shap", {})
            samples.append({
                "id": ex.id, "prompt_tokens": int(prepared.prompt_ids.numel()),
                "image_tokens": int(prepared.image_positions.numel()), "question_tokens": int(prepared.n_question),
                "mm_shap": {k: mm.get(k) for k in ("n_text", "n_image", "n_evaluations", "n_permutations",
                                                   "t_shap_stderr", "stopped_by")},
                "stages": per, "audit_min_llm_tokens": trie_size(list(uniq.values())),
                "vision_min_tokens": int(sum(meter.images.values())), "distinct_images": len(meter.images)})
            print(json.dumps({"sample": ex.id, "seconds": round(sum(seconds.values()), 2),
                              "llm_tokens": sum(meter.tokens.values())}), flush=True)
    finally:
        meter.close()
    return {"samples": samples, "probes": list(probes), "llm_params": meter.llm_params,
            "vision_params": meter.vision_params}


def summarize(res: dict) -> dict:
    """Means per sample, per stage; the ratio spent / minimum per probe and for the audit."""
    samples = res["samples"]
    stages = list(samples[0]["stages"])
    table = {}
    for s in stages:
        row = {k: float(np.mean([x["stages"][s][k] for x in samples])) for k in samples[0]["stages"][s]}
        if "min_llm_tokens" in row:
            row["ratio"] = row["llm_tokens"] / row["min_llm_tokens"] if row["min_llm_tokens"] else None
        table[s] = row
    spent = float(np.mean([sum(x["stages"][s]["llm_tokens"] for s in stages) for x in samples]))
    for row in table.values():
        row["share_of_tokens"] = row["llm_tokens"] / spent
    sum_min = float(np.mean([sum(x["stages"][s].get("min_llm_tokens", 0) for s in stages[2:]) for x in samples]))
    audit_min = float(np.mean([x["audit_min_llm_tokens"] for x in samples]))
    vision = float(np.mean([sum(x["stages"][s]["vision_tokens"] for s in stages) for x in samples]))
    vision_min = float(np.mean([x["vision_min_tokens"] for x in samples]))
    seconds = float(np.mean([sum(x["stages"][s]["seconds"] for s in stages) for x in samples]))
    flops = float(np.mean([sum(x["stages"][s]["flops"] for s in stages) for x in samples]))
    return {"stages": table, "llm_tokens": spent, "sum_of_probe_minima": sum_min, "audit_minimum": audit_min,
            "ratio_to_sum_of_minima": spent / sum_min, "ratio_to_audit_minimum": spent / audit_min,
            # what a KV cache reusing every shared prefix would save of the tokens spent, at most
            "prefix_cache_saving": 1 - audit_min / spent,
            "vision_tokens": vision, "vision_minimum": vision_min, "vision_ratio": vision / vision_min,
            "seconds": seconds, "flops": flops, "tokens_per_second": spent / seconds,
            "prompt_tokens": float(np.mean([x["prompt_tokens"] for x in samples])),
            "image_tokens": float(np.mean([x["image_tokens"] for x in samples])),
            "question_tokens": float(np.mean([x["question_tokens"] for x in samples]))}


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def run_shapes(shapes, width: str, n: int, device: str, probe_config: dict | None = None,
               peak_tflops: float | None = None, prefix_cache: bool = True) -> dict:
    import real_shapes

    from mbias.models import ScoringConfig, wrap_model

    dev = torch.device(device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    out = {}
    for shape in shapes:
        t0 = time.perf_counter()
        model, proc = real_shapes.build(shape, width, dev, dtype)
        scorer = wrap_model(model, proc, config=ScoringConfig(prefix_cache=prefix_cache),
                            model_id=f"{shape} ({width} width, random weights)")
        build_s = time.perf_counter() - t0
        res = audit_shape(scorer, real_shapes.examples(n + 1)[:n] if n > 1 else real_shapes.examples(2)[:1],
                          probe_config, dev)
        res["summary"] = summarize(res)
        # the scoring settings the audit ran with (batch_size auto: what it came to at this prompt length)
        res["summary"].update(prefix_cache=bool(scorer._prefix_ok),
                              batch_rows=scorer.batch_rows(int(res["summary"]["prompt_tokens"])))
        res["build_seconds"] = build_s
        if peak_tflops:
            res["summary"]["tflops"] = res["summary"]["flops"] / res["summary"]["seconds"] / 1e12
            res["summary"]["fraction_of_bf16_peak"] = res["summary"]["tflops"] / peak_tflops
        out[shape] = res
        print(json.dumps({"shape": shape, "ratio_to_sum_of_minima": res["summary"]["ratio_to_sum_of_minima"],
                          "seconds_per_sample": res["summary"]["seconds"]}), flush=True)
        del model, scorer
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return out


def markdown(results: dict, header: list[str], meta: dict) -> list[str]:
    lines = [f"# The default audit's cost per sample at real shapes ({meta['width']} width, {meta['device']})", "",
             *header, "", f"`{meta['command']}`; random-weight models with the families' geometry "
             "(`benchmarks/real_shapes.py`), POPE-style yes/no questions; the default audit's probes "
             f"(`probe_config`: {json.dumps(meta['probe_config'])}); means over {meta['samples']} samples. "
             "LLM tokens count padding (it is computed); the minimum is the prefix trie of the rows each measure "
             "asks for (the script's docstring). 'ratio' = spent / minimum.", ""]
    for shape, res in results.items():
        s = res["summary"]
        lines += [f"## {shape}: {s['prompt_tokens']:.0f} prompt tokens ({s['image_tokens']:.0f} image, "
                  f"{s['question_tokens']:.0f} question)", "",
                  f"Per sample: {s['llm_tokens']:,.0f} LLM tokens spent; sum of the probes' minima "
                  f"{s['sum_of_probe_minima']:,.0f} (**{s['ratio_to_sum_of_minima']:.2f}x**), the audit's joint "
                  f"minimum {s['audit_minimum']:,.0f} ({s['ratio_to_audit_minimum']:.2f}x: a perfect prefix cache "
                  f"would save {s['prefix_cache_saving']:.0%}); vision tower "
                  f"{s['vision_tokens']:,.0f} patches against {s['vision_minimum']:,.0f} "
                  f"({s['vision_ratio']:.2f}x); {s['seconds']:.1f} s, {s['tokens_per_second']:,.0f} LLM tokens/s"
                  + (f"; prefix cache {'on' if s['prefix_cache'] else 'off'}, {s['batch_rows']} rows per batch"
                     if "prefix_cache" in s else "")
                  + (f", {s['tflops']:.1f} TFLOP/s = {s['fraction_of_bf16_peak']:.0%} of the bf16 matmul peak"
                     if "tflops" in s else "") + ".", "",
                  "| stage | forward passes | LLM tokens | share | of which padding | vision passes | vision tokens "
                  "| seconds | peak memory MiB | min LLM tokens | ratio |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in s["stages"].items():
            pad = 1 - r["llm_tokens_unpadded"] / r["llm_tokens"] if r["llm_tokens"] else 0.0
            ratio = "-" if r.get("ratio") is None else f"{r['ratio']:.2f}x"
            mn = "-" if "min_llm_tokens" not in r else f"{r['min_llm_tokens']:,.0f}"
            lines.append(f"| {name} | {r['forward_passes']:.1f} | {r['llm_tokens']:,.0f} | {r['share_of_tokens']:.0%} | "
                         f"{pad:.0%} | "
                         f"{r['vision_passes']:.1f} | {r['vision_tokens']:,.0f} | {r['seconds']:.2f} | "
                         f"{r['peak_memory_mib']:.0f} | {mn} | {ratio} |")
        lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="llava-1.5,qwen2-vl-448,qwen2-vl-896,smolvlm")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--width", choices=("tiny", "7b"), default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--probe-config", default="{}", help="JSON, as the audit's probe_config")
    ap.add_argument("--no-prefix-cache", action="store_true", help="score every variant in full (the scorer's "
                    "prefix_cache off), for the before/after")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--name", help="file stem of the results (default audit_cost, audit_cost_7b at 7B width)")
    args = ap.parse_args()
    from mbias.provenance import results_header

    started = time.perf_counter()
    peak = None
    if torch.device(args.device).type == "cuda":
        from gpu_check import matmul_peak

        peak = matmul_peak(torch.device(args.device), torch.bfloat16)
    probe_config = json.loads(args.probe_config)
    results = run_shapes(args.shapes.split(","), args.width, args.samples, args.device, probe_config, peak,
                         prefix_cache=not args.no_prefix_cache)
    header, provenance = results_header(wall_seconds=time.perf_counter() - started)
    name = args.name or "audit_cost" + ("" if args.width == "tiny" else f"_{args.width}")
    meta = {"command": "python " + " ".join(["benchmarks/audit_cost.py", *sys.argv[1:]]), "width": args.width,
            "device": args.device, "samples": args.samples, "probe_config": probe_config,
            "bf16_matmul_peak_tflops": peak, "threads": torch.get_num_threads()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "provenance": provenance, "shapes": {
        k: {kk: vv for kk, vv in v.items()} for k, v in results.items()}}, indent=2))
    lines = markdown(results, header, meta)
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
