"""Shared prefixes among scored rows: which tokens two variants have in common, and a plan that computes each
shared prefix once.

A causal language model's state at a position depends only on the tokens up to it, so rows that agree on their
first ``t`` tokens can share the key/value cache of those ``t`` tokens. The coalitions of a Shapley estimate agree
on long prefixes (the template, then every image cell before the first one whose mask differs), so scoring them
through a prefix tree instead of row by row skips most of the image tokens (``benchmarks/audit_cost.py`` counts
it). This module only plans; ``ScoringMixin._forward_shared`` runs the plan through the model's own forward.

Token identity: the id at text positions, and at image positions a fingerprint of the feature row fed there (two
float32 random projections: identical rows always match; different ones collide only if both projections round
to the same floats, which would mean the rows are equal to float32 precision anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_P = np.uint64(1099511628211)  # FNV prime: the prefix hash h_t = h_{t-1} * P + x_t + 1 (mod 2^64)
_IMAGE_TAG = np.int64(1) << np.int64(62)  # keeps feature fingerprints apart from token ids

# Cost model of a level (in token-forwards): its rows x its tokens, the key/value copy of the cached prefix each
# of its rows starts from (COPY per cached token: a memory copy against a forward's matmuls), and a fixed
# overhead per forward call (CALL tokens; timing the two paths on benchmarks/audit_cost.py's tiny models gave
# 58-426). A level that does not pay for itself is not planned. The constants are fixed, not timed per run: the
# plan, and so every score to the last bit, depends only on the rows (a resumed audit equals an uninterrupted one).
COPY = 0.02
CALL = 256.0


def token_identities(prepared, ids: torch.Tensor, feats: torch.Tensor | None) -> np.ndarray:
    """[V, P] int64 identities of the prompt rows ``ids`` [V, P] with image feature rows ``feats`` [V, N, D]."""
    out = ids.cpu().numpy().astype(np.int64)
    if feats is not None and prepared.n_image_tokens:
        dim = feats.shape[-1]
        g = torch.Generator().manual_seed(dim)
        proj = torch.randn(dim, 2, generator=g).to(feats.device)
        # float32 (a half-precision fingerprint would let distinct rows collide), a few variants at a time (a
        # float32 copy of every variant's features could be gigabytes at 7B width)
        fp = np.concatenate([(feats[i:i + 32].float() @ proj).cpu().numpy() for i in range(0, feats.shape[0], 32)])
        bits = fp.view(np.uint32).astype(np.uint64)
        mixed = _splitmix64((bits[..., 0] << np.uint64(32)) | bits[..., 1]) >> np.uint64(2)  # 62 bits of all 64
        out[:, prepared.image_positions.cpu().numpy()] = mixed.astype(np.int64) | _IMAGE_TAG
    return out


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection on 64 bits that spreads every input bit over the output, so dropping
    the top two bits (for the image tag) does not make fingerprints that differ in one bit collide."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def prefix_hashes(identities: np.ndarray) -> np.ndarray:
    """[V, P] uint64: entry t identifies the row's first t + 1 tokens (equal prefixes, equal hashes)."""
    x = identities.astype(np.uint64)
    h = np.zeros(x.shape, dtype=np.uint64)
    acc = np.zeros(x.shape[0], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for t in range(x.shape[1]):
            acc = acc * _P + x[:, t] + np.uint64(1)
            h[:, t] = acc
    return h


def distinct_prefixes(hashes: np.ndarray, lengths: np.ndarray | None = None) -> np.ndarray:
    """[P] entry t: how many distinct prefixes of length t + 1 the rows have (rows shorter than t + 1 left out)."""
    live = np.ones(hashes.shape, dtype=bool) if lengths is None else np.arange(hashes.shape[1]) < lengths[:, None]
    return np.array([len(np.unique(hashes[live[:, t], t])) for t in range(hashes.shape[1])])


def trie_size(rows: list[np.ndarray]) -> int:
    """Tokens a perfect prefix cache computes for ``rows`` (int64 identities, any lengths): the size of their
    prefix trie, the least computation any scorer of a causal model can do for them."""
    if not rows:
        return 0
    lengths = np.array([len(r) for r in rows])
    mat = np.zeros((len(rows), int(lengths.max())), dtype=np.int64)
    for i, r in enumerate(rows):
        mat[i, :len(r)] = r
    return int(distinct_prefixes(prefix_hashes(mat), lengths).sum())


@dataclass
class Level:
    """Tokens ``start:end`` of the prompt, computed once for each distinct prefix ``:end``: ``rows`` are the rows
    (of the chunk) that represent them and ``parent`` the previous level's entry each one continues."""

    start: int
    end: int
    rows: np.ndarray
    parent: np.ndarray | None
    inverse: np.ndarray  # entry of this level each chunk row continues from


@dataclass
class Plan:
    levels: list[Level]  # shared levels; the last ends where the per-row tail (rest of prompt + answer) starts
    tail_start: int
    tail_parent: np.ndarray  # [B] the last level's entry each row continues from

    def tokens(self, prompt_len: int, answer_len: int) -> int:
        shared = sum(len(lv.rows) * (lv.end - lv.start) for lv in self.levels)
        return shared + len(self.tail_parent) * (prompt_len - self.tail_start + answer_len)


def plan(identities: np.ndarray, answer_len: int = 1) -> Plan | None:
    """The cheapest split of the prompt into shared levels under the cost model above (dynamic programming over
    the positions where the number of distinct prefixes grows), or None when sharing does not pay (every row
    would be computed in full anyway)."""
    B, P = identities.shape
    if B < 2 or P < 2:
        return None
    h = prefix_hashes(identities)
    distinct = distinct_prefixes(h)
    # a level may end at prefix length e (1..P-1) just before the number of distinct prefixes grows
    ends = [e for e in range(1, P) if distinct[e] > distinct[e - 1]]
    if not ends:
        ends = [P - 1]
    cand = np.array([0] + ends)  # 0: the start; ends are prefix lengths
    u = np.array([0] + [distinct[e - 1] for e in ends], dtype=float)
    best = np.full(len(cand), np.inf)
    back = np.zeros(len(cand), dtype=int)
    best[0] = 0.0
    for j in range(1, len(cand)):
        s = cand[:j]
        cost = best[:j] + u[j] * (cand[j] - s) + COPY * u[j] * s + CALL
        back[j] = int(np.argmin(cost))
        best[j] = cost[back[j]]
    tail = best + B * (P + answer_len - cand) + COPY * B * cand + CALL
    j = int(np.argmin(tail))
    if j == 0 or tail[j] >= B * (P + answer_len) + CALL:
        return None
    chain = []
    while j:
        chain.append(int(cand[j]))
        j = back[j]
    chain.reverse()
    levels, start, prev = [], 0, None
    for end in chain:
        _, first, inverse = np.unique(h[:, end - 1], return_index=True, return_inverse=True)
        parent = None if prev is None else prev.inverse[first]
        prev = Level(start, end, first, parent, inverse.reshape(-1))
        levels.append(prev)
        start = end
    return Plan(levels, start, prev.inverse)
