"""Train a tiny LLaVA from scratch on a synthetic split: deterministic on CPU, about 90 s on two cores."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import torch

from mbias.models.batching import answer_loss, collate

logger = logging.getLogger(__name__)


@dataclass
class ZooTrainConfig:
    hidden: int = field(default=64, metadata={"help": "language model width"})
    text_layers: int = field(default=2, metadata={"help": "language model layers"})
    vision_layers: int = field(default=2, metadata={"help": "vision tower layers"})
    vision_hidden: int = field(default=32, metadata={"help": "vision tower width"})
    image_size: int = field(default=32, metadata={"help": "image side in pixels (the synthetic scenes' size)"})
    patch_size: int = field(default=8, metadata={"help": "ViT patch side: each scene object covers 2x2 patches"})
    # 800, not fewer: at 500 steps whether the ViT had learned shapes was seed luck (p00 shape accuracy 0.80,
    # 0.64, 0.56 for seeds 0-2), which made the unbiased model look worse than the p50 one; at 800 p00 reaches
    # test-cp 0.987-1.000 for seeds 0-2 and the p90 prior still survives (test-cp 0.43 and 0.18, seeds 0 and 1)
    steps: int = field(default=800, metadata={"help": "optimizer steps (a fixed budget: the planted prior must survive it)"})
    batch_size: int = field(default=64, metadata={"help": "examples per step"})
    lr: float = field(default=2e-3, metadata={"help": "peak AdamW learning rate (cosine decay, linear warm-up)"})
    warmup: int = field(default=60, metadata={"help": "warm-up steps"})
    vision_lr_mult: float = field(default=1.0, metadata={"help": "learning-rate multiplier of the vision tower "
                                                                 "and projector (their gradients arrive weak)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    train_size: int = field(default=6000, metadata={"help": "training examples drawn from the split"})
    seed: int = field(default=0, metadata={"help": "model init and data order seed"})

    def to_dict(self) -> dict:
        return asdict(self)


def _lr_at(step: int, cfg: ZooTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


def train_tiny(scorer, train_examples, cfg: ZooTrainConfig, progress: bool = True) -> dict:
    """Full-parameter training of ``scorer.model`` on the answer tokens; returns timing and the loss curve."""
    from tqdm.auto import tqdm

    model = scorer.model
    model.train()
    t0 = time.perf_counter()
    encoded = [scorer.encode(ex) for ex in train_examples]
    encode_s = time.perf_counter() - t0
    groups = scorer.parameter_groups()
    params = dict(model.named_parameters())
    vision = [params[n] for n in groups["vision"]]
    rest = [params[n] for n in groups["language"] + groups["other"]]
    opt = torch.optim.AdamW([{"params": rest, "mult": 1.0}, {"params": vision, "mult": cfg.vision_lr_mult}],
                            lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(encoded), generator=gen)
    cursor, losses = 0, []
    bar = tqdm(range(cfg.steps), desc="training", disable=not progress, leave=False)
    for step in bar:
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(encoded), generator=gen), 0
        idx = order[cursor:cursor + cfg.batch_size].tolist()
        cursor += cfg.batch_size
        batch = collate(scorer, [encoded[i] for i in idx])
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg) * group["mult"]
        loss = answer_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    model.eval()
    return {"encode_seconds": round(encode_s, 2), "train_seconds": round(time.perf_counter() - t0 - encode_s, 2),
            "first_loss": losses[0] if losses else None,
            "final_loss": sum(losses[-50:]) / min(50, len(losses)) if losses else None,
            "loss_curve": [round(sum(losses[i:i + 50]) / len(losses[i:i + 50]), 4) for i in range(0, len(losses), 50)]}


@torch.no_grad()
def answers(scorer, examples, progress: bool = False) -> list[dict]:
    """Per example: whether the predicted answer (argmax over choices) is right and whether it is the cue answer."""
    from tqdm.auto import tqdm

    out = []
    for ex in tqdm(examples, desc="evaluating", disable=not progress, leave=False):
        pred = scorer.predict(scorer.prepare(ex))
        out.append({"category": ex.category, "correct": float(pred.correct),
                    "follows_cue": float(pred.text == ex.meta.get("cue_answer"))})
    return out


def choice_accuracy(scorer, examples, progress: bool = False) -> dict:
    """Accuracy (argmax over choices) overall and per category, plus the share of answers equal to the cue."""
    rows = answers(scorer, examples, progress)
    per_cat: dict[str, list[float]] = {}
    for r in rows:
        per_cat.setdefault(r["category"], []).append(r["correct"])
    n = len(rows)
    return {"accuracy": sum(r["correct"] for r in rows) / n, "n": n,
            "cue_rate": sum(r["follows_cue"] for r in rows) / n,
            "per_category": {k: sum(v) / len(v) for k, v in sorted(per_cat.items())}}
