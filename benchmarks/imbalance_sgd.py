"""The seed balancing recipes under SGD with momentum, as the OGM-GE and M-SAM papers train, in the learning-speed benchmark.

Under Adam a factor on a group's gradient is (almost) cancelled by the second-moment normalisation, which is why
mbias's modulation recipes scale the group's learning rate by default (``mode: update``). The papers train with SGD
and scale the gradient itself. This suite runs the scenario of ``imbalance.py`` (zoo:scratch builds 0-2, every
parameter trained on synth:shapes-p90/train, 800 steps x batch 64, cosine) with SGD (momentum 0.9; learning rate
chosen for plain training on val) and the papers' form: ``ogm_ge`` with ``mode: gradient``, and ``msam`` with
vanilla SAM (``sam``) as its control; plus ``miles`` (mu 0.33, its setting chosen under Adam) and ``mnl``, to see
whether their full-training gains hold against a plain run that does not collapse. The recipes' settings are not
tuned for SGD. Measures, intervals and pairing as in ``imbalance.py``; arms in ``configs/imbalance/sgd/``.

    python benchmarks/imbalance_sgd.py --select  # -> results/imbalance_sgd_selection.md + configs/imbalance/sgd/
    python benchmarks/imbalance_sgd.py           # -> results/imbalance_sgd.{json,md}
"""

from __future__ import annotations

from imbalance_routing import Suite, main

SGD = Suite(
    script="imbalance_sgd.py", folder="sgd", variants={"": "SGD with momentum 0.9"},
    grid={"ogm_ge": [{"mode": "gradient"}], "msam": [{}], "sam": [{}], "miles": [{"mu": 0.33}], "mnl": [{}]},
    title="The seed recipes under SGD",
    setup="trained with every parameter by SGD (momentum 0.9, cosine), synth:shapes-p90/train, 800 steps x batch 64 "
          "(configs/imbalance/sgd/)",
    plain_grid=[{"learning_rate": 0.02}, {"learning_rate": 0.05}, {"learning_rate": 0.1}])

if __name__ == "__main__":
    main(SGD, __doc__)
