"""Masking and scoring choices. They change the numbers, so every one is a field recorded with the results."""

from __future__ import annotations

from dataclasses import dataclass, field

from mbias.config import check_number
from mbias.errors import ConfigError

IMAGE_BASELINES = ("blank", "noise", "black", "swap")
TEXT_BASELINES = ("pad", "space", "unk")
MASKING_LEVELS = ("feature", "pixel")


@dataclass
class AdapterConfig:
    image_baseline: str = field(
        default="blank",
        metadata={"help": "what a masked image patch becomes: blank (the image's mean colour), noise, black, or "
                          "swap (another example's image)"},
    )
    text_baseline: str = field(
        default="pad", metadata={"help": "token a masked question token becomes: pad, space or unk"}
    )
    masking: str = field(
        default="feature",
        metadata={"help": "feature: replace projected image features of masked patches with the baseline's "
                          "(vision tower runs once); pixel: paint the baseline into the pixels and re-run the tower"},
    )
    patch_grid: int = field(default=4, metadata={"help": "image players form a patch_grid x patch_grid grid"})
    batch_size: int = field(default=32, metadata={"help": "masked variants per forward pass (halved on OOM)"})
    max_new_tokens: int = field(default=16, metadata={"help": "greedy generation length for open-ended answers"})
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "format string with {question}, for families without a chat template (PaliGemma: e.g. "
                          "'answer en {question}' for mix checkpoints); default: the question as is"},
    )
    noise_std: float = field(default=0.25, metadata={"help": "std of the Gaussian noise baseline, in [0,1] pixel units"})
    noise_seed: int = field(default=0, metadata={"help": "seed of the noise baseline (mixed with the example id)"})

    def __post_init__(self):
        for name, allowed in (("image_baseline", IMAGE_BASELINES), ("text_baseline", TEXT_BASELINES),
                              ("masking", MASKING_LEVELS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("patch_grid", "batch_size", "max_new_tokens"):
            check_number(self, name, integer=True, ge=1)
        check_number(self, "noise_std", ge=0)
        check_number(self, "noise_seed", integer=True, ge=0)
