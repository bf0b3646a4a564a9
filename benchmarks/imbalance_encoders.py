"""Encoder-level vs module-level parameter groups for the recipes that steer groups, in the learning-speed benchmark under SGD.

The seed papers scale their *encoders'* gradients and leave the fusion head alone. In a decoder MLLM the LLM is
both the text encoder and the fusion module, so module-level groups (``language`` = the whole LLM) slow the
fusion whenever the text side dominates: the starvation reading of the recipes' losses, which the late-fusion
control (``imbalance_late_fusion.py``) supports, since there OGM-GE beats plain training. Encoder-level groups
(``modality_groups: encoders``) test it directly: the language group is the token embeddings alone, the LLM's
layers and output head train at the base rate as a shared fusion group, the vision group is unchanged (ViT and
projector). The scenario, optimizer and recipe settings are ``imbalance_sgd.py``'s (SGD with momentum 0.9, lr
0.05, 800 steps x batch 64, every parameter trained; ``ogm_ge`` and ``cggm`` with gradient scaling, ``miles``
mu 0.33; not tuned), so its module-level runs are reused. Plain training does not read the groups: its two rows
are a check that the grouping alone changes nothing. Measures, intervals and pairing as in ``imbalance.py``;
arms in ``configs/imbalance/sgd/``.

    python benchmarks/imbalance_encoders.py  # -> results/imbalance_encoders.{json,md}
"""

from __future__ import annotations

from imbalance_routing import Suite, main

ENCODERS = Suite(
    script="imbalance_encoders.py", folder="sgd",
    variants={"": "module-level groups", "_encoders": "encoder-level groups"},
    grid={"ogm_ge": [{"mode": "gradient"}], "miles": [{"mu": 0.33}], "cggm": [{"mode": "gradient"}]},
    title="Encoder-level vs module-level groups under SGD",
    setup="trained with every parameter by SGD (momentum 0.9, lr 0.05, cosine), synth:shapes-p90/train, 800 steps "
          "x batch 64 (configs/imbalance/sgd/)")

if __name__ == "__main__":
    main(ENCODERS, __doc__)
