"""``mbias env``: versions and devices, the first thing to paste into a bug report."""

from __future__ import annotations

import importlib.metadata
import platform


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in ("mbias", "torch", "torchvision", "transformers", "peft", "accelerate", "captum", "bitsandbytes",
                 "tokenizers", "numpy", "pillow", "matplotlib", "datasets"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def devices() -> list[str]:
    import torch

    found = [f"cpu ({torch.get_num_threads()} threads)"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            prop = torch.cuda.get_device_properties(i)
            found.append(f"cuda:{i} {prop.name} ({prop.total_memory / 2**30:.0f} GiB)")
    return found


def environment_report() -> str:
    lines = [f"python       {platform.python_version()} ({platform.platform()})"]
    for name, version in package_versions().items():
        lines.append(f"{name:<12} {version or 'not installed'}")
    lines.append("devices      " + ", ".join(devices()))
    return "\n".join(lines)
