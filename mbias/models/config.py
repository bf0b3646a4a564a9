"""The configs of a loaded model: how it is loaded and placed (``LoadOptions``), and the masking and scoring
choices (``ScoringConfig``), which change the numbers, so every one is a field recorded with the results.

Torch-free: the CLI builds its flags from these classes before anything heavy is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mbias.config import build_config, check_number, values_from_args
from mbias.errors import ConfigError

IMAGE_BASELINES = ("blank", "noise", "black", "swap")
TEXT_BASELINES = ("pad", "space", "unk")
MASKING_LEVELS = ("feature", "pixel")


@dataclass
class ScoringConfig:
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
    batch_size: str | int = field(default="auto", metadata={
        "help": "masked variants per forward pass, or auto: 32 on a CPU; on a GPU as many as an estimate of the "
                "activations and cache per token fits in 70 percent of free memory. Halved on out-of-memory, and the size "
                "that fit is kept for the rest of the run"})
    prefix_cache: bool = field(default=True, metadata={
        "help": "compute the prompt prefix that masked variants share once and reuse its key/value cache "
                "(checked against the full forward on the first batch, and not used where they disagree); off: "
                "every variant runs its whole prompt"})
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
        if isinstance(self.batch_size, str) and self.batch_size.strip().isdigit():
            self.batch_size = int(self.batch_size)  # from the command line
        if self.batch_size != "auto":
            try:
                check_number(self, "batch_size", integer=True, ge=1)
            except ConfigError as e:
                raise ConfigError(str(e).replace("; got", " or auto; got")) from None
        for name in ("patch_grid", "max_new_tokens"):
            check_number(self, name, integer=True, ge=1)
        check_number(self, "noise_std", ge=0)
        check_number(self, "noise_seed", integer=True, ge=0)


DTYPES = ("device", "auto", "float32", "bfloat16", "float16")
# accelerate's placement strategies (transformers' ``device_map=``); anything else must be a JSON file
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B|B)?$", re.IGNORECASE)


def parse_max_memory(value) -> dict[str, str]:
    """``0=70GiB,1=70GiB,cpu=200GiB`` (or a mapping, from YAML) -> {"0": "70GiB", "1": "70GiB", "cpu": "200GiB"}."""
    if isinstance(value, str):
        pairs = [p.strip() for p in value.split(",") if p.strip()]
        if any("=" not in p for p in pairs):
            raise ConfigError(f"max_memory must read DEVICE=SIZE,... (e.g. 0=70GiB,1=70GiB,cpu=200GiB); got {value!r}")
        value = dict(p.split("=", 1) for p in pairs)
    out = {str(k).strip(): str(v).strip() for k, v in (value or {}).items()}
    for device, size in out.items():
        if not (device.isdigit() or device == "cpu"):
            raise ConfigError(f"max_memory: {device!r} is not a device; use GPU indices (0, 1, ...) and cpu (what "
                              "does not fit goes to the offload folder)")
        match = _MEMORY.match(size)
        if not match:
            raise ConfigError(f"max_memory: {size!r} for {device} is not a size; write e.g. 70GiB, 500MB")
        if float(re.match(r"\d+(\.\d+)?", size).group(0)) <= 0:
            raise ConfigError(f"max_memory: {device}={size} leaves no room on that device; give it a size above 0 "
                              "or leave the device out")
    return out


@dataclass
class LoadOptions:
    """How to load a model: the one definition behind ``load_model``, the CLI's model flags of ``audit`` and
    ``finetune`` (generated from these fields) and scripts. Big-model placement (``device_map``, ``max_memory``,
    ``offload_folder``) is accelerate's, passed through transformers' ``from_pretrained``."""

    adapter: str | None = field(default=None, metadata={
        "help": "a PEFT (LoRA) adapter folder (or hub id) to apply on top of the model"})
    device: str = field(default="auto", metadata={
        "help": "auto | cpu | cuda | cuda:N; auto = cuda when torch sees a GPU (with --device-map the map decides)"})
    dtype: str = field(default="device", metadata={
        "help": "weights dtype: device (bfloat16 on GPU, float32 on CPU), auto (the checkpoint's own, as in "
                "transformers), float32, bfloat16 or float16"})
    load_in_4bit: bool = field(default=False, metadata={"help": "4-bit NF4 weights via bitsandbytes (GPU only)"})
    load_in_8bit: bool = field(default=False, metadata={"help": "8-bit weights via bitsandbytes (GPU only)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow code from the model repo"})
    revision: str | None = field(default=None, metadata={
        "help": "hub revision (branch, tag or commit) of the model"})
    device_map: str | dict | None = field(default=None, metadata={
        "help": "split one model over the visible GPUs (and CPU/disk) with accelerate: auto, balanced, "
                "balanced_low_0, sequential, or a JSON file {module name: GPU index | cpu | disk} (from Python "
                "or YAML: the mapping itself)"})
    max_memory: dict[str, str] = field(default_factory=dict, metadata={
        "help": "with --device-map: the most each device may hold, e.g. 0=70GiB,1=70GiB,cpu=200GiB (GPUs not "
                "named are not used; what does not fit goes to --offload-folder)"})
    offload_folder: str | None = field(default=None, metadata={
        "help": "with --device-map: folder for the weights that fit on no device (read from disk per forward)"})

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.load_in_4bit and self.load_in_8bit:
            raise ConfigError("--load-in-4bit and --load-in-8bit exclude each other; pick one")
        self.max_memory = parse_max_memory(self.max_memory)
        if self.device_map is None:
            if self.max_memory or self.offload_folder:
                raise ConfigError("--max-memory and --offload-folder place a split model; add --device-map auto")
            return
        if self.device != "auto":
            raise ConfigError(f"--device {self.device} and --device-map exclude each other: the map places the "
                              "model; to restrict it to some GPUs, name them in --max-memory (or set "
                              "CUDA_VISIBLE_DEVICES)")
        if not isinstance(self.device_map, dict) and self.device_map not in DEVICE_MAP_STRATEGIES:
            path = Path(self.device_map).expanduser()
            if path.suffix != ".json" or not path.is_file():
                raise ConfigError(f"device_map must be one of {', '.join(DEVICE_MAP_STRATEGIES)} or a JSON file "
                                  f"{{module: device}}; no such file: {self.device_map}")
        if self.max_memory and self.device_map not in DEVICE_MAP_STRATEGIES:
            raise ConfigError("--max-memory sizes a placement strategy (auto, balanced, sequential); a device map "
                              "file already says where each module goes")

    @classmethod
    def from_args(cls, args) -> LoadOptions:
        """From the flags ``add_dataclass_args(parser, LoadOptions)`` made (unset flags keep the defaults)."""
        return build_config(cls, values_from_args(args, cls), where="flags")
