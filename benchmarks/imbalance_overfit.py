"""SAM and M-SAM where sharpness-aware minimisation is known to help: an overfitting regime of the learning-speed benchmark.

In every other suite the training set (6,000 examples, about 8 epochs) is not overfitted (test-id 0.98), and
`msam` and vanilla `sam` lose to plain training. SAM's gains are in generalisation under overfitting, and M-SAM's
paper trains ~100 epochs. This suite is the SGD suite (``imbalance_sgd.py``: zoo:scratch builds 0-2, every
parameter, SGD momentum 0.9, lr 0.05, 800 steps x batch 64) on the first 2,000 training examples, so 25 epochs:
plain, ``sam`` and ``msam`` at their defaults (rho 0.05), not tuned. Measures, intervals and pairing as in
``imbalance.py``; arms in ``configs/imbalance/overfit/``.

    python benchmarks/imbalance_overfit.py  # -> results/imbalance_overfit.{json,md}
"""

from __future__ import annotations

from imbalance_routing import Suite, main

OVERFIT = Suite(
    script="imbalance_overfit.py", folder="overfit", variants={"": "2,000 examples, 25 epochs"},
    grid={"sam": [{}], "msam": [{}]},
    title="SAM and M-SAM in an overfitting regime",
    setup="trained with every parameter by SGD (momentum 0.9, lr 0.05, cosine) on the first 2,000 examples of "
          "synth:shapes-p90/train, 800 steps x batch 64 = 25 epochs (configs/imbalance/overfit/)")

if __name__ == "__main__":
    main(OVERFIT, __doc__)
