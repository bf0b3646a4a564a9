"""The prefix planner (mbias.models.prefix): trie sizes, token identities and level plans on hand-made rows."""

from __future__ import annotations

import numpy as np
import torch

from mbias.models import prefix


def test_trie_size_counts_distinct_prefixes():
    rows = [np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([1, 5]), np.array([1, 2, 3])]
    # length 1: {1}; length 2: {12, 15}; length 3: {123, 124}
    assert prefix.trie_size(rows) == 5
    assert prefix.trie_size([]) == 0


class _Prepared:
    def __init__(self, image_positions):
        self.image_positions = torch.tensor(image_positions)
        self.n_image_tokens = len(image_positions)


def test_identities_follow_the_feature_rows_fed_at_image_positions():
    p = _Prepared([1, 2, 3])
    ids = torch.tensor([[7, 0, 0, 0, 9], [7, 0, 0, 0, 9], [7, 0, 0, 0, 8]])
    feats = torch.randn(1, 3, 16).repeat(3, 1, 1)
    feats[1, 2] += 1.0  # row 1 differs from row 0 at the third image token only
    ident = prefix.token_identities(p, ids, feats)
    assert (ident[0] == ident[2])[:4].all() and ident[0, 4] != ident[2, 4]
    assert (ident[0, :3] == ident[1, :3]).all() and ident[0, 3] != ident[1, 3]
    assert ident[0, 0] == 7 and (ident[:, 1:4] >= 2 ** 62).all()  # image identities kept apart from token ids


def test_plan_shares_long_prefixes_and_declines_when_nothing_is_shared():
    rng = np.random.default_rng(0)
    shared = rng.integers(0, 1000, 300)
    rows = np.stack([np.concatenate([shared, rng.integers(0, 1000, 20)]) for _ in range(16)])
    plan = prefix.plan(rows, answer_len=1)
    assert plan is not None and plan.levels[0].start == 0 and len(plan.levels[0].rows) == 1
    assert plan.tokens(rows.shape[1], 1) < 0.2 * rows.size
    # every row continues from the level entry whose prefix it has
    last = plan.levels[-1]
    assert (rows[last.rows[plan.tail_parent], :last.end] == rows[:, :last.end]).all()
    distinct = rng.integers(0, 1000, (16, 320))
    assert prefix.plan(distinct, answer_len=1) is None


def test_plan_levels_follow_a_two_level_tree():
    """Two groups sharing a template; inside each, rows sharing a longer prefix: the plan's levels nest."""
    rng = np.random.default_rng(1)
    template = rng.integers(0, 1000, 1000)
    rows = []
    for _ in range(2):
        middle = rng.integers(0, 1000, 200)
        for _ in range(8):
            rows.append(np.concatenate([template, middle, rng.integers(0, 1000, 10)]))
    rows = np.stack(rows)
    plan = prefix.plan(rows, answer_len=1)
    assert [len(lv.rows) for lv in plan.levels] == [1, 2]
    assert (plan.levels[1].parent == 0).all() and plan.tail_start == 1200
    assert plan.tokens(rows.shape[1], 1) == 1000 + 2 * 200 + 16 * (10 + 1)
    # a level that saves less than a forward call costs is not planned: the template alone saves 1 x 1000 tokens
    short = np.concatenate([rows[:, :int(prefix.CALL) // 2], rows[:, 1000:]], axis=1)
    assert [len(lv.rows) for lv in prefix.plan(short, answer_len=1).levels] == [2]
