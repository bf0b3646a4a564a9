"""Resolve a model reference (hub id, local folder, ``zoo:NAME``) and load it behind the right adapter."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from mbias.errors import ModelLoadError
from mbias.models.base import ModelAdapter
from mbias.models.config import AdapterConfig
from mbias.models.families import adapter_class_for, supported_families

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_model_ref(ref: str) -> str:
    """A local folder path or hub id for ``ref``; ``zoo:NAME`` builds the zoo model if needed."""
    if ref.startswith("zoo:"):
        from mbias.zoo import zoo_model_path

        return str(zoo_model_path(ref[4:]))
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{ref} is a file; pass the model folder (the one with config.json)")
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{ref} has no config.json, so it is not a saved model folder; pass the folder "
                                 "written by save_pretrained, a hub id, or zoo:NAME")
        return str(path)
    if ref.startswith((".", "/", "~")) or not _HUB_ID.match(ref):
        raise ModelLoadError(f"no model folder at {ref}; check the path, or pass a hub id (org/name) or zoo:NAME")
    return ref


def pick_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(device)


def pick_dtype(dtype: str, device):
    import torch

    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16") from None


def load_adapter(
    model_ref: str,
    *,
    adapter: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    trust_remote_code: bool = False,
    revision: str | None = None,
    config: AdapterConfig | None = None,
    is_trainable: bool = False,
) -> ModelAdapter:
    """Load processor + model (+ optional PEFT adapter) and wrap them in the family's adapter."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    path = resolve_model_ref(model_ref)
    common = {"trust_remote_code": trust_remote_code, "revision": revision}
    try:
        hf_config = AutoConfig.from_pretrained(path, **common)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"could not load a model config for {model_ref!r} ({first}); check the id or path, "
                             "and note that nothing can be downloaded when offline") from None
    model_type = getattr(hf_config, "model_type", "?")
    cls = adapter_class_for(model_type)
    if cls is None:
        if getattr(hf_config, "vision_config", None) is None:
            raise ModelLoadError(
                f"{model_ref!r} is a {model_type} model, which takes no images; mbias audits image-text models: "
                f"{supported_families()}, or any model with get_image_features and an image token")
        cls = ModelAdapter
        logger.warning("%s is a %s model: no dedicated adapter, using the generic path (image tokens assumed "
                       "to form a square row-major grid)", model_ref, model_type)

    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    kwargs = dict(common, dtype=torch_dtype)
    if load_in_4bit or load_in_8bit:
        if dev.type != "cuda":
            raise ModelLoadError("--load-in-4bit/--load-in-8bit need a CUDA GPU (bitsandbytes); drop the flag "
                                 "on CPU")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit, bnb_4bit_compute_dtype=torch_dtype,
            bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=["vision_tower", "vision_model", "visual", "multi_modal_projector",
                                   "connector", "lm_head"],
        )
        kwargs["device_map"] = {"": dev.index or 0}
    try:
        processor = AutoProcessor.from_pretrained(path, **common)
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"could not load {model_ref!r} as an image-text model ({first})") from None
    if "quantization_config" not in kwargs:
        model.to(dev)
    if not hasattr(model, "get_image_features"):
        raise ModelLoadError(f"{model_ref!r} ({type(model).__name__}) has no get_image_features; supported: "
                             f"{supported_families()}")
    if adapter:
        model = _attach_peft(model, adapter, is_trainable)
    model.eval()
    out = cls(model, processor, model_id=model_ref, config=config)
    out.model_path = path
    out.adapter_path = adapter
    return out


def _attach_peft(model, adapter: str, is_trainable: bool):
    from peft import PeftModel

    apath = Path(adapter).expanduser()
    if apath.exists() and not (apath / "adapter_config.json").exists():
        raise ModelLoadError(f"{adapter} has no adapter_config.json; pass the folder a PEFT adapter was saved to")
    try:
        peft_model = PeftModel.from_pretrained(model, str(apath) if apath.exists() else adapter,
                                               is_trainable=is_trainable)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load adapter {adapter!r}: {str(exc).splitlines()[0]}") from None
    # LoRA layers live inside the base model's modules, so the unwrapped model scores with the adapter applied.
    return peft_model.get_base_model()


def adapter_record(adapter: str | None) -> dict | None:
    """What an audited PEFT adapter is, for every report: its folder (or hub id), its base model and, when mbias
    wrote it, the recipe, its settings, the training data and steps (from ``recipe.json``)."""
    if not adapter:
        return None
    record = {"path": adapter, "base_model": None, "peft_type": None, "recipe": None, "steps": None}
    folder = Path(adapter).expanduser()
    for name, fields in (("adapter_config.json", {"base_model_name_or_path": "base_model", "peft_type": "peft_type",
                                                  "r": "r"}),
                         ("recipe.json", {"model": "base_model", "recipe": "recipe", "recipe_config": "recipe_config",
                                          "steps": "steps", "data": "data"})):
        try:
            info = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        record.update({ours: info[theirs] for theirs, ours in fields.items() if info.get(theirs) is not None})
    return record


@dataclass
class LoadOptions:
    """How to load a model: the CLI's model flags, shared by audit and finetune."""

    adapter: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    trust_remote_code: bool = False
    revision: str | None = None

    @classmethod
    def from_args(cls, args) -> LoadOptions:
        return cls(adapter=args.adapter, device=args.device, dtype=args.dtype, load_in_4bit=args.load_in_4bit,
                   load_in_8bit=args.load_in_8bit, trust_remote_code=args.trust_remote_code, revision=args.revision)

    def load(self, model_ref: str, *, config: AdapterConfig | None = None, device: str | None = None,
             with_adapter: bool = True) -> ModelAdapter:
        return load_adapter(model_ref, adapter=self.adapter if with_adapter else None, device=device or self.device,
                            dtype=self.dtype, load_in_4bit=self.load_in_4bit, load_in_8bit=self.load_in_8bit,
                            trust_remote_code=self.trust_remote_code, revision=self.revision, config=config)
