"""Shapley estimators over n binary players, given a *batched* value function.

``value_fn(masks)`` takes a [K, n] bool tensor (True = player present) and returns [K] values; estimators hand it
as many coalitions at once as they can, because on a GPU (and even on a CPU) one forward pass of K variants costs
far less than K passes of one. Every estimator returns a ``ShapleyResult`` with the number of distinct coalitions
it evaluated, the unit its cost is compared in.

- ``exact_shapley``: all 2^n coalitions, exact weights. For n up to ~14.
- ``permutation_shapley``: Monte-Carlo over permutations, antithetic pairs (each permutation with its reverse)
  for variance reduction, all prefix coalitions of all permutations deduplicated and batched. Each permutation
  telescopes, so the estimate satisfies efficiency (sum phi = v(N) - v({})) exactly. The antithetic pairs are
  independent draws, so their spread gives the estimate's standard error (``stderr``: of each phi_j, or of a
  ``statistic`` of phi by the jackknife over pairs); with a ``tolerance`` the estimator draws pairs in rounds and
  stops once that standard error is at or below it, ``n_permutations`` being the cap.
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
    stderr: float | None = None  # standard error of ``statistic(phi)`` (or max over phi_j's), None if not known
    n_permutations: int | None = None  # permutations used (sampling estimators)
    stopped_by: str | None = None  # "tolerance", "cap" (the budget ran out first) or None (a fixed budget)


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
                        antithetic: bool = True, batch_size: int = 256, tolerance: float | None = None,
                        min_permutations: int = 6, statistic=None) -> ShapleyResult:
    """Monte-Carlo permutation estimate (``n_permutations`` in total; pairs when ``antithetic``).

    Without ``tolerance`` every permutation is drawn at once (one deduplicated batch of coalitions). With it,
    antithetic pairs are drawn in rounds, the coalitions already scored are kept, and the estimator stops as soon
    as the standard error is at or below ``tolerance`` (after at least ``min_permutations``), or when
    ``n_permutations`` (the cap) are used. The permutations drawn are the same sequence either way (the first k
    pairs of a tolerance run are the first k pairs of a fixed-budget run with the same ``rng``).

    The standard error is of ``statistic(phi)`` (a callable on the [n] estimate returning a float or None) by the
    jackknife over antithetic pairs, or without ``statistic`` the largest standard error of a single phi_j (the
    pairs' spread over sqrt(#pairs)).
    """
    if tolerance is not None and not antithetic:
        raise ValueError("tolerance-based stopping needs antithetic pairs (their spread is the error estimate)")
    cache: dict[bytes, float] = {}
    perms: list[np.ndarray] = []

    def draw(k: int) -> None:  # up to k permutations in total, a pair at a time (the fixed-budget order)
        while len(perms) < k:
            p = rng.permutation(n)
            perms.append(p)
            if antithetic and len(perms) < k:
                perms.append(p[::-1].copy())

    def marginals(batch: list[np.ndarray]) -> tuple[np.ndarray, float, float]:
        """[len(batch), n] marginal contribution of each player in each permutation (scoring the coalitions not
        scored yet), v(N) and v({})."""
        m = len(batch)
        order = np.zeros((m, n), dtype=np.int64)
        for k, p in enumerate(batch):
            order[k, p] = np.arange(n)  # position of each player in permutation k
        prefixes = order[:, None, :] < np.arange(n + 1)[None, :, None]  # [m, n+1, n]
        unique, inverse = np.unique(prefixes.reshape(-1, n), axis=0, return_inverse=True)
        keys = [row.tobytes() for row in np.packbits(unique, axis=1)]
        todo = [i for i, key in enumerate(keys) if key not in cache]
        for i in range(0, len(todo), batch_size):
            idx = todo[i:i + batch_size]
            out = value_fn(_from_numpy(unique[idx])).detach().float().cpu().numpy()
            cache.update(zip((keys[j] for j in idx), out.tolist(), strict=True))
        values = np.array([cache[key] for key in keys])
        vals = values[inverse.reshape(m, n + 1)]
        step = np.diff(vals, axis=1)  # [m, n]: marginal of the k-th player added
        out = np.zeros((m, n))
        for k, p in enumerate(batch):
            out[k, p] = step[k]
        return out, vals[0, -1], vals[0, 0]

    cap = max(1, n_permutations)
    start = cap if tolerance is None else min(cap, max(2, min_permutations + min_permutations % 2))
    draw(start)
    marg, v_full, v_empty = marginals(perms)
    stderr = _stderr(marg, antithetic, statistic)
    stopped_by = None
    if tolerance is not None:
        while not (stderr is not None and stderr <= tolerance) and len(perms) < cap:
            used = len(perms)
            # pairs needed if the error falls as 1/sqrt(pairs), at most 3x the pairs so far per round
            need = used * (stderr / tolerance) ** 2 if stderr is not None and stderr > 0 else 2 * used
            draw(min(cap, max(used + 2, min(3 * used, int(math.ceil(need))))))
            new, _, _ = marginals(perms[used:])
            marg = np.concatenate([marg, new])
            stderr = _stderr(marg, antithetic, statistic)
        stopped_by = "tolerance" if stderr is not None and stderr <= tolerance else "cap"
    phi = marg.mean(0)
    return ShapleyResult(phi, float(v_full), float(v_empty), len(cache),
                         "permutation" + ("+antithetic" if antithetic else ""), stderr=stderr,
                         n_permutations=len(perms), stopped_by=stopped_by)


def pair_estimates(marg: np.ndarray, antithetic: bool = True) -> np.ndarray:
    """[k, n] independent per-draw estimates of phi: each antithetic pair's mean (an odd last permutation, drawn
    without its reverse, is left out), or each permutation's marginals."""
    if not antithetic:
        return marg
    k = marg.shape[0] // 2
    return 0.5 * (marg[0:2 * k:2] + marg[1:2 * k:2])


def jackknife_stderr(draws: np.ndarray, statistic) -> float | None:
    """Jackknife standard error of ``statistic(mean of draws)`` over the rows of ``draws`` [k, n] (k >= 2); None
    when fewer than two draws give a defined statistic."""
    k = draws.shape[0]
    if k < 2:
        return None
    loo = (draws.sum(0, keepdims=True) - draws) / (k - 1)  # [k, n] leave-one-out means
    vals = np.array([np.nan if (v := statistic(row)) is None else v for row in loo], dtype=float)
    vals = vals[np.isfinite(vals)]
    if len(vals) < 2:
        return None
    return float(np.sqrt((k - 1) / k * ((vals - vals.mean()) ** 2).sum()))


def _stderr(marg: np.ndarray, antithetic: bool, statistic) -> float | None:
    draws = pair_estimates(marg, antithetic)
    if draws.shape[0] < 2:
        return None
    if statistic is not None:
        return jackknife_stderr(draws, statistic)
    return float((draws.std(0, ddof=1) / np.sqrt(draws.shape[0])).max())
