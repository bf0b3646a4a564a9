"""Shared fixtures: tiny models of every family, built offline once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")



@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(family)`` -> folder of a saved tiny random model (built on first use)."""
    from mbias.tiny import build_tiny

    cache: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in cache:
            cache[family] = str(build_tiny(family, tmp_path_factory.mktemp(family)))
        return cache[family]

    return get


@pytest.fixture(scope="session")
def shapes_image():
    """A real picture: a red circle and a blue square on grey, 40x48 (not square, to exercise resizing)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (48, 40), (128, 128, 128))
    draw = ImageDraw.Draw(img)
    draw.ellipse((4, 4, 20, 20), fill=(220, 30, 30))
    draw.rectangle((28, 18, 44, 34), fill=(30, 30, 220))
    return img


@pytest.fixture(scope="session")
def accelerate_launch():
    """``accelerate_launch()`` -> the command prefix for two processes (gloo on CPU) on a free port: the default
    port 29500 may be taken by another launch on the same machine, and two process groups meeting on one port
    abort."""
    import socket
    import sys

    def command() -> list[str]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", str(port)]

    return command


def assert_checkpointing_trains_the_same(model_dir: str, config_for, out) -> None:
    """Two short runs of ``config_for(gradient_checkpointing)`` (a FinetuneConfig), without and with gradient
    checkpointing: the trained parameters must agree to float noise."""
    import torch

    from mbias.finetune.run import build_trainer

    weights = {}
    for checkpointing in (False, True):
        trainer, _ = build_trainer(model_dir, "synth:shapes-p90/train", out / str(checkpointing), progress=False,
                                   config=config_for(checkpointing))
        trainer.train()
        weights[checkpointing] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()
                                  if p.requires_grad}
    assert weights[True].keys() == weights[False].keys()
    for name, w in weights[False].items():
        assert torch.allclose(w, weights[True][name], atol=1e-6), name
