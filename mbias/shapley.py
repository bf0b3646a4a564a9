"""Shapley estimators over n binary players, given a *batched* value function.

``value_fn(masks)`` takes a [K, n] bool tensor (True = player present) and returns [K] values; estimators hand it
as many coalitions at once as they can, because on a GPU (and even on a CPU) one forward pass of K variants costs
far less than K passes of one. Every estimator returns a ``ShapleyResult`` with the number of distinct coalitions
it evaluated, the unit its cost is compared in.

- ``exact_shapley``: all 2^n coalitions, exact weights. For n up to ~14.
- ``permutation_shapley``: Monte-Carlo over permutations, antithetic pairs (each permutation with its reverse)
  for variance reduction, all prefix coalitions of all permutations deduplicated and batched. Each permutation
  telescopes, so the estimate satisfies efficiency (sum phi = v(N) - v({})) exactly.
- ``two_player_shapley``: the closed form for two players (image, text), from the four coalitions' values; the
  audit's ``modality_shapley`` probe and the fine-tuning signals (``finetune/signals.py``) share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass
class ShapleyResult:
    phi: np.ndarray  # [n]
    v_full: float
    v_empty: float
    n_evaluations: int  # distinct coalitions scored
    estimator: str


def two_player_shapley(v_both, v_img, v_txt, v_none):
    """(phi_img, phi_txt) from the values of {I,T}, {I}, {T}, {} (floats, or tensors of per-sample values)."""
    phi_img = 0.5 * ((v_both - v_txt) + (v_img - v_none))
    phi_txt = 0.5 * ((v_both - v_img) + (v_txt - v_none))
    return phi_img, phi_txt


def _masks_to_bool(codes: np.ndarray, n: int) -> torch.Tensor:
    bits = (codes[:, None].astype(np.int64) >> np.arange(n, dtype=np.int64)[None, :]) & 1
    return _from_numpy(bits.astype(bool))


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    import torch  # here, not at the top: the reports load the probes (two_player_shapley) without torch

    return torch.from_numpy(array)


def _evaluate(value_fn, codes: np.ndarray, n: int, batch_size: int) -> dict[int, float]:
    values = {}
    for i in range(0, len(codes), batch_size):
        chunk = codes[i:i + batch_size]
        out = value_fn(_masks_to_bool(chunk, n))
        values.update(zip(chunk.tolist(), out.detach().float().cpu().tolist(), strict=True))
    return values


def exact_shapley(value_fn, n: int, *, batch_size: int = 256) -> ShapleyResult:
    """Exact Shapley values by enumerating all 2^n coalitions."""
    if n > 20:
        raise ValueError(f"exact Shapley over {n} players needs 2^{n} evaluations; use sampling")
    codes = np.arange(2 ** n, dtype=np.int64)
    table = _evaluate(value_fn, codes, n, batch_size)
    v = np.array([table[c] for c in codes.tolist()])
    size = np.array([bin(c).count("1") for c in codes.tolist()])
    weights = np.array([math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)])
    phi = np.zeros(n)
    for i in range(n):
        without = codes[(codes >> i) & 1 == 0]
        phi[i] = float((weights[size[without]] * (v[without | (1 << i)] - v[without])).sum())
    return ShapleyResult(phi, float(v[-1]), float(v[0]), len(codes), "exact")


def permutation_shapley(value_fn, n: int, n_permutations: int, *, rng: np.random.Generator,
                        antithetic: bool = True, batch_size: int = 256) -> ShapleyResult:
    """Monte-Carlo permutation estimate (``n_permutations`` in total; pairs when ``antithetic``)."""
    perms = []
    while len(perms) < n_permutations:
        p = rng.permutation(n)
        perms.append(p)
        if antithetic and len(perms) < n_permutations:
            perms.append(p[::-1].copy())
    m = len(perms)
    # prefix coalitions of every permutation as boolean rows: [m, n+1, n]
    order = np.zeros((m, n), dtype=np.int64)
    for k, p in enumerate(perms):
        order[k, p] = np.arange(n)  # position of each player in permutation k
    prefixes = order[:, None, :] < np.arange(n + 1)[None, :, None]
    unique, inverse = np.unique(prefixes.reshape(-1, n), axis=0, return_inverse=True)
    values = np.empty(len(unique))
    for i in range(0, len(unique), batch_size):
        out = value_fn(_from_numpy(unique[i:i + batch_size]))
        values[i:i + batch_size] = out.detach().float().cpu().numpy()
    vals = values[inverse.reshape(m, n + 1)]
    marg = np.diff(vals, axis=1)  # [m, n]: marginal of the k-th player added
    phi = np.zeros(n)
    for p, row in zip(perms, marg, strict=True):
        phi[p] += row
    phi /= m
    return ShapleyResult(phi, float(vals[0, -1]), float(vals[0, 0]), len(unique),
                         "permutation" + ("+antithetic" if antithetic else ""))
