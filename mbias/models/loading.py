"""Load a model reference (hub id, local folder, ``zoo:NAME``: resolved by ``mbias.refs``) behind the right scorer."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import warnings
from pathlib import Path

from mbias.errors import ConfigError, ModelLoadError
from mbias.models.base import Scorer, image_token_id
from mbias.models.config import DEVICE_MAP_STRATEGIES, LoadOptions, ScoringConfig
from mbias.models.families import scorer_class_for, supported_families
from mbias.models.routing import ROUTING_FILE, attach_routes, routing_record
from mbias.refs import resolve_model_ref

logger = logging.getLogger(__name__)


def pick_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(device)


def pick_dtype(dtype: str, device):
    """A torch dtype, or "auto" (transformers reads the checkpoint's own dtype)."""
    import torch

    if dtype == "auto":
        return "auto"
    if dtype == "device":  # the fastest safe choice for where the model runs
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use device, auto, float32, bfloat16 or float16") from None


def load_model(model_ref: str, options: LoadOptions | None = None, *, config: ScoringConfig | None = None,
                 is_trainable: bool = False, **fields) -> Scorer:
    """Load processor + model (+ optional PEFT adapter) and wrap them in the family's scorer.

    ``options`` says how (``LoadOptions``); ``fields`` override some of them, for scripts:
    ``load_model(ref, device="cpu")``. With ``device_map`` the model is split by accelerate's big-model
    inference (GPUs, then CPU, then the offload folder); its hooks move activations between devices, so the
    scorer feeds every input to the main device and scores equal the single-device path's.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    opts = dataclasses.replace(options or LoadOptions(), **fields)  # replace re-validates the merged options
    path = resolve_model_ref(model_ref)
    common = {"trust_remote_code": opts.trust_remote_code, "revision": opts.revision}
    try:
        hf_config = AutoConfig.from_pretrained(path, **common)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load a model config for {model_ref!r} ({_first_line(exc)}); check the id "
                             "or path, and note that nothing can be downloaded when offline") from None
    cls = _scorer_class(hf_config, model_ref)

    dev = pick_device(opts.device)
    torch_dtype = pick_dtype(opts.dtype, dev)
    kwargs = dict(common, dtype=torch_dtype, **_placement(opts))
    if opts.load_in_4bit or opts.load_in_8bit:
        if dev.type != "cuda":
            raise ModelLoadError("--load-in-4bit/--load-in-8bit need a CUDA GPU (bitsandbytes); drop the flag "
                                 "on CPU")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=opts.load_in_4bit, load_in_8bit=opts.load_in_8bit, bnb_4bit_compute_dtype=pick_dtype("device", dev) if torch_dtype == "auto" else torch_dtype,
            bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            # the vision side stays in full precision: quantizing it blurs what the image probes measure
            llm_int8_skip_modules=[*cls.vision_modules, *cls.projector_modules, "lm_head"],
        )
        kwargs.setdefault("device_map", {"": dev.index or 0})
    try:
        processor = AutoProcessor.from_pretrained(path, **common)
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except (OSError, ValueError, ImportError) as exc:
        raise ModelLoadError(f"could not load {model_ref!r} as an image-text model ({_first_line(exc)})") from None
    if "device_map" not in kwargs:
        model.to(dev)
    if not hasattr(model, "get_image_features"):
        raise ModelLoadError(f"{model_ref!r} ({type(model).__name__}) has no get_image_features; supported: "
                             f"{supported_families()}")
    if opts.adapter:
        if "disk" in getattr(model, "hf_device_map", {}).values():
            # peft re-dispatches an offloaded model itself and, for disk, rewrites the checkpoint under module names
            # that transformers 5's image-text models do not share: it fails deep inside
            raise ModelLoadError("peft cannot attach an adapter to a model with layers offloaded to disk; give "
                                 "--max-memory room for the whole model on GPUs and CPU, or merge the adapter into "
                                 "the weights first (PeftModel.merge_and_unload + save_pretrained)")
        peft_model = attach_peft(model, opts.adapter, is_trainable=is_trainable)
        # LoRA layers live inside the base model's modules, so the unwrapped model scores with the adapter applied
        model = peft_model.get_base_model()
        if hasattr(peft_model, "hf_device_map"):  # peft re-dispatched a CPU-offloaded model on its own map
            model.hf_device_map = peft_model.hf_device_map
    model.eval()
    out = cls(model, processor, model_id=model_ref, config=config)
    out.model_path = path
    out.adapter_path = opts.adapter
    return out


def _scorer_class(hf_config, where: str) -> type[Scorer]:
    """The family's scorer for a model config; the generic one (with a warning) for other image-text models."""
    model_type = getattr(hf_config, "model_type", "?")
    cls = scorer_class_for(model_type)
    if cls is None:
        if getattr(hf_config, "vision_config", None) is None:
            raise ModelLoadError(
                f"{where!r} is a {model_type} model, which takes no images; mbias audits image-text models: "
                f"{supported_families()}, or any model with get_image_features and an image token")
        cls = Scorer
        logger.warning("%s is a %s model: no dedicated scorer, using the generic path (image tokens assumed "
                       "to form a square row-major grid)", where, model_type)
    return cls


def wrap_model(model, processor, *, config: ScoringConfig | None = None, model_id: str | None = None) -> Scorer:
    """A scorer around a model already in memory: the object itself, never a copy, however it was loaded (a
    device map, 4/8-bit weights, a ``PeftModel`` whose adapters score as they are, a custom chat template on
    ``processor``). The model's train/eval mode is the caller's business (``mbias.audit`` and the monitor
    callback switch to eval and back)."""
    from peft import PeftModel

    if processor is None:
        raise ConfigError("an in-memory model needs its processor (the AutoProcessor it was loaded with): "
                          "mbias.audit(model, processor, data)")
    # LoRA layers live inside the base model's modules, so the unwrapped model scores with the adapter applied
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    name = model_id or getattr(base, "name_or_path", "") or type(base).__name__
    cls = _scorer_class(base.config, name)
    if not hasattr(base, "get_image_features"):
        raise ModelLoadError(f"{name!r} ({type(base).__name__}) has no get_image_features; supported: "
                             f"{supported_families()}")
    out = cls(base, processor, model_id=name, config=config)
    out.model_path = None
    out.adapter_path = None
    return out


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _device_map(opts: LoadOptions) -> str | dict:
    """A placement strategy's name, or the {module: device} map of a map file."""
    if isinstance(opts.device_map, dict) or opts.device_map in DEVICE_MAP_STRATEGIES:
        return opts.device_map
    try:
        placed = json.loads(Path(opts.device_map).expanduser().read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read the device map {opts.device_map} ({_first_line(exc)})") from None
    if not isinstance(placed, dict):
        raise ModelLoadError(f"{opts.device_map}: a device map is a JSON object {{module name: device}}")
    return placed


def _placement(opts: LoadOptions) -> dict:
    """``from_pretrained`` keywords that split the model with accelerate (none without a device map)."""
    if opts.device_map is None:
        return {}
    out = {"device_map": _device_map(opts)}
    if opts.max_memory:  # accelerate reads a bare number as bytes only when it is an int
        out["max_memory"] = {int(k) if k.isdigit() else k: int(v) if v.isdigit() else v
                             for k, v in opts.max_memory.items()}
    if opts.offload_folder:
        out["offload_folder"] = str(Path(opts.offload_folder).expanduser())
    return out


def for_process(opts: LoadOptions, state) -> LoadOptions:
    """The options one of several data-parallel processes (accelerate's ``state``) loads with.

    Without a device map: the process's own device. With one: the process's own slice of this node's GPUs
    (``n_gpus // processes per node`` of them, by local rank), so 8 GPUs under 2 processes are two 4-GPU shards.
    GPU ``i`` in ``--max-memory`` or in a map file means the ``i``-th GPU of the slice; without GPU sizes each gets
    what accelerate measures free, and the CPU budget is split between the node's processes. Each process
    offloads into its own subfolder.
    """
    if opts.device_map is None:
        return dataclasses.replace(opts, device=str(state.device))
    import torch

    n_gpus = torch.cuda.device_count()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
    offload = str(Path(opts.offload_folder) / f"rank{state.process_index}") if opts.offload_folder else None
    if n_gpus == 0:
        return dataclasses.replace(opts, offload_folder=offload)
    per = n_gpus // local
    if per == 0:
        raise ConfigError(f"{local} processes per node with a device map each need at least {local} GPUs; this node "
                          f"has {n_gpus}: start fewer processes (accelerate launch --num_processes)")
    first = state.local_process_index * per

    def shard_gpu(i: int, where: str) -> int:
        if not 0 <= i < per:
            raise ConfigError(f"{where} names GPU {i}, but each of the {local} processes on this node has {per} "
                              f"GPUs (0-{per - 1}, its slice of the node's {n_gpus})")
        return first + i

    placed = _device_map(opts)
    if isinstance(placed, dict):
        placed = {m: shard_gpu(d, "the device map") if isinstance(d, int) else d for m, d in placed.items()}
        return dataclasses.replace(opts, device_map=placed, offload_folder=offload)
    memory = {str(shard_gpu(int(k), "--max-memory")): v for k, v in opts.max_memory.items() if k.isdigit()}
    if not memory:
        from accelerate.utils import get_max_memory

        free = get_max_memory()
        memory = {str(g): str(free[g]) for g in range(first, first + per)}
    if "cpu" in opts.max_memory:
        memory["cpu"] = opts.max_memory["cpu"]
    else:
        import psutil

        memory["cpu"] = str(psutil.virtual_memory().available // local)
    return dataclasses.replace(opts, max_memory=memory, offload_folder=offload)


@contextlib.contextmanager
def peft_wrapping():
    """Around peft's wrapping of a model: peft reads ``model.is_gradient_checkpointing``, which transformers 5
    deprecates with a FutureWarning on every fine-tune and adapter audit that no mbias user can act on (the attribute
    is peft's to stop reading)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated", category=FutureWarning)
        yield


def attach_peft(model, adapter: str, *, is_trainable: bool = False):
    """``PeftModel.from_pretrained`` with one-line errors; the one way both audits and fine-tuning attach a saved
    adapter (fine-tuning keeps the PeftModel, audits score with its base model)."""
    from peft import PeftModel

    apath = Path(adapter).expanduser()
    if apath.exists() and not (apath / "adapter_config.json").exists():
        raise ModelLoadError(f"{adapter} has no adapter_config.json; pass the folder a PEFT adapter was saved to")
    try:
        with peft_wrapping():
            peft_model = PeftModel.from_pretrained(model, str(apath) if apath.exists() else adapter,
                                                   is_trainable=is_trainable)
    except RuntimeError as exc:  # load_state_dict's "size mismatch": LoRA weights shaped for another model
        if "size mismatch" not in str(exc):
            raise
        raise ModelLoadError(_other_base(adapter, model, "its weights have other shapes")) from None
    except (OSError, ValueError) as exc:
        if "not found in the base model" in str(exc) or "Target module" in str(exc):
            raise ModelLoadError(_other_base(adapter, model, "the layers it adapts do not exist here")) from None
        raise ModelLoadError(f"could not load adapter {adapter!r}: {_first_line(exc)}") from None
    if routing_record(adapter):  # a modality-routed adapter: its image- and text-position parts too
        token = image_token_id(model.config)
        if token is None:
            raise ModelLoadError(f"{adapter} is a routed adapter, but the model's config names no image token")
        attach_routes(peft_model, adapter, is_trainable=is_trainable, image_token_id=token)
    return peft_model


def _other_base(adapter: str, model, why: str) -> str:
    """One line for an adapter trained on another base model than ``model``."""
    try:
        base = json.loads((Path(adapter).expanduser() / "adapter_config.json").read_text()).get(
            "base_model_name_or_path")
    except (OSError, ValueError):
        base = None
    trained_on = f"it was trained on {base}" if base else "it was trained on another base model"
    here = getattr(model, "name_or_path", "") or type(model).__name__
    return (f"adapter {adapter} does not fit the model {here}: {trained_on}, and {why}; pass the base model it was "
            "trained on with --model")


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
    record["routed"] = (folder / ROUTING_FILE).exists()
    return record
