"""``mbias env``: versions and devices, the first thing to paste into a bug report.

The system part (OS, CUDA, cuDNN, driver, GPU models, CPU) is torch's own bug-report tool,
``torch.utils.collect_env``; mbias adds the versions of the libraries it runs on, which that tool does not list.
"""

from __future__ import annotations

import functools
import importlib.metadata


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in ("mbias", "torch", "torchvision", "transformers", "peft", "accelerate", "captum", "bitsandbytes",
                 "tokenizers", "numpy", "pillow", "matplotlib", "datasets"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.cache
def system_info() -> dict[str, str | None]:
    """The OS and CUDA stack as ``torch.utils.collect_env`` reads them. It runs nvidia-smi, pip and lscpu (about
    half a second), so once per process: none of it changes while mbias runs."""
    from torch.utils.collect_env import get_env_info

    env = get_env_info()
    return {"os": env.os, "cuda_available": env.is_cuda_available, "cuda_compiled": env.cuda_compiled_version,
            "cuda_runtime": env.cuda_runtime_version, "cudnn": env.cudnn_version,
            "nvidia_driver": env.nvidia_driver_version, "gpus": env.nvidia_gpu_models}


def environment_report() -> str:
    from torch.utils.collect_env import get_pretty_env_info

    lines = [f"{name:<12} {version or 'not installed'}" for name, version in package_versions().items()]
    return "\n".join(lines) + "\n\n" + get_pretty_env_info()
