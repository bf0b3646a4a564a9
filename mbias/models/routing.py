"""Modality-routed LoRA inside the LLM (as MokA and IMoD do): per-token LoRA weights for image and text positions.

A routed adapter is three PEFT LoRA adapters on one model, all active at once:

- ``default``: the shared part, on every chosen target (vision tower, projector, LLM), applied at every token;
- ``vision``: the LLM's linear layers again, its output kept only at image-token positions;
- ``language``: the same layers, its output kept only at text-token positions.

So "vision" and "language" parameter groups exist inside the fusion model itself, where a decoder MLLM learns to
look; the balancing recipes steer them (``route_groups``) while the shared part trains at the base rate.

The routing is plain PEFT plus forward hooks: a pre-hook on the input embeddings reads which positions hold the
image token in the ids of the current forward pass, and a hook on each routed ``lora_B`` multiplies its output by
that position mask before PEFT adds it to the base layer's output. Nothing in PEFT is patched. Gradient
checkpointing recomputes a layer during backward, after other forward passes have embedded other ids:
``checkpoint_context`` gives the recomputation the masks of the pass that ran the layer first. ``save_pretrained``
writes the shared part at the folder's root and the routed parts in ``vision/`` and ``language/``; ``ROUTING_FILE``
marks the folder, and ``attach_routes`` loads the parts back. A routed adapter cannot be merged into the weights
(its delta depends on the token), and ``PeftModel.from_pretrained`` alone loads only the shared part: load it
through mbias (``mbias audit --adapter DIR``, or ``mbias.models.loading.attach_peft``).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from mbias.errors import MbiasError, ModelLoadError

ROUTES = ("vision", "language")  # adapter name = the token positions its output is kept at
SHARED = "default"
ROUTING_FILE = "routing.json"
_ROUTED_PARAM = re.compile(r"\.lora_(?:A|B|magnitude_vector)\.(vision|language)\.")
_SHARED_PARAM = re.compile(r"\.lora_(?:A|B|magnitude_vector)\.default\.")


def add_routes(peft_model, llm_targets: list[str], lora_kwargs: dict, image_token_id: int) -> None:
    """Add the ``vision`` and ``language`` LoRA adapters on ``llm_targets`` (the LLM's linear layers) next to the
    shared ``default`` one, make all three active and trainable, and route them."""
    from peft import LoraConfig

    for route in ROUTES:
        peft_model.add_adapter(route, LoraConfig(target_modules=llm_targets, **lora_kwargs))
    activate_routes(peft_model, trainable=True)
    install_routing(peft_model, image_token_id)


def activate_routes(peft_model, *, trainable: bool) -> None:
    """All three parts active (and trainable or frozen): PEFT's ``set_adapter`` on a PeftModel takes one name."""
    peft_model.base_model.set_adapter([SHARED, *ROUTES], inference_mode=not trainable)


def is_routed(peft_model) -> bool:
    return all(route in getattr(peft_model, "peft_config", {}) for route in ROUTES)


def install_routing(peft_model, image_token_id: int) -> list:
    """Hooks that keep each routed LoRA's output at its own token positions; returns the hook handles."""
    import torch
    from peft.tuners.lora import LoraLayer

    state: dict = {}

    def remember(module, args, kwargs):
        ids = args[0] if args else kwargs.get("input")
        if ids is None or ids.dtype not in (torch.long, torch.int, torch.int32):
            raise MbiasError("routed LoRA reads the image positions from the input ids; this forward pass gave the "
                             "embeddings something else (inputs_embeds?)")
        image = ids == image_token_id
        state.clear()  # masks cast for an earlier pass's devices and dtypes
        state["vision"], state["language"] = image, ~image

    peft_model.mbias_routing_state = state  # for checkpoint_context
    handles = [peft_model.get_input_embeddings().register_forward_pre_hook(remember, with_kwargs=True)]
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer):
            for route in ROUTES:
                if route in module.lora_B:
                    handles.append(module.lora_B[route].register_forward_hook(
                        functools.partial(_keep_positions, state=state, route=route, layer=name)))
    return handles


def checkpoint_context(peft_model):
    """A ``context_fn`` for ``torch.utils.checkpoint`` (non-reentrant) that recomputes each checkpointed layer of a
    routed model with the position masks of the forward pass it first ran in, not of the pass that ran last."""
    import contextlib

    state = peft_model.mbias_routing_state

    def context_fn():
        saved = dict(state)  # the masks of the forward pass running this layer now

        @contextlib.contextmanager
        def recompute():
            current = dict(state)
            state.clear()
            state.update(saved)
            try:
                yield
            finally:
                state.clear()
                state.update(current)

        return contextlib.nullcontext(), recompute()

    return context_fn


def _keep_positions(module, args, output, *, state, route, layer):
    mask = state.get(route)
    if mask is None or tuple(output.shape[:-1]) != tuple(mask.shape):
        raise MbiasError(f"routed LoRA: layer {layer} got {tuple(output.shape[:-1])} token positions but the last "
                         f"input ids were {None if mask is None else tuple(mask.shape)}; a routed adapter needs "
                         "the layers to run on the ids just embedded (no cached prefix)")
    key = (route, output.device, output.dtype)  # cast once per pass, not once per layer
    if key not in state:
        state[key] = mask.unsqueeze(-1).to(device=output.device, dtype=output.dtype)
    return output * state[key]


def route_groups(modality_of: dict[str, str]) -> dict[str, str]:
    """Parameter groups of a routed model: the LLM's routed LoRA parts are the ``vision`` and ``language`` groups,
    its shared LoRA part is ``shared`` (base rate, no recipe scaling); the vision side's LoRA stays ``vision``."""
    out = {}
    for name, group in modality_of.items():
        routed = _ROUTED_PARAM.search(name)
        if routed:
            group = routed.group(1)
        elif group == "language" and _SHARED_PARAM.search(name):
            group = "shared"
        out[name] = group
    return out


def mark_routed(folder: Path) -> None:
    (Path(folder) / ROUTING_FILE).write_text(json.dumps({"shared": SHARED, "routes": list(ROUTES)}, indent=2) + "\n")


def routing_record(adapter: str) -> dict | None:
    """The routing file of a saved adapter folder (or hub repo), or None when it is a plain adapter."""
    folder = Path(adapter).expanduser()
    if folder.exists():
        path = folder / ROUTING_FILE
        if not path.exists():
            return None
    else:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(adapter, ROUTING_FILE))
        except Exception:  # not there (a plain adapter), or offline, private, ...: PeftModel reports the real problem
            return None
    try:
        record = json.loads(path.read_text())
        if set(record["routes"]) != set(ROUTES):
            raise ValueError(f"routes {record['routes']}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path}: not a routing file mbias wrote ({exc}); remove it to load the shared part "
                             "alone, or save the adapter again") from None
    return record


def attach_routes(peft_model, adapter: str, *, is_trainable: bool, image_token_id: int) -> None:
    """Load a routed adapter's ``vision`` and ``language`` parts into ``peft_model`` (which holds its shared part),
    activate all three and install the routing."""
    folder = Path(adapter).expanduser()
    for route in ROUTES:
        where = dict(model_id=str(folder / route)) if folder.exists() else dict(model_id=adapter, subfolder=route)
        try:
            peft_model.load_adapter(adapter_name=route, is_trainable=is_trainable, **where)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{adapter}: its routed part {route!r} did not load ({str(exc).splitlines()[0]}); "
                                 f"the folder needs {route}/adapter_config.json next to {ROUTING_FILE}") from None
    activate_routes(peft_model, trainable=is_trainable)
    install_routing(peft_model, image_token_id)
