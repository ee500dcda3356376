"""The recorder's own walk over an op's arguments gives pytree's answer (issue 18: a cheaper trace per op)."""

from __future__ import annotations

import collections
import os

import torch

import symcx.capture.recorder as recorder
from symcx._torch import tree_leaves, tree_map

Pair = collections.namedtuple("Pair", "a b")

#: Argument structures an aten call gets (tensors, ints, lists of sizes, optional None, dtypes,
#: kwargs) and containers pytree treats specially (a namedtuple, torch.Size, an OrderedDict).
CASES = [
    ((torch.ones(2), 3, [4, 5], None, torch.float32), {"dim": [0, 1], "keepdim": True}),
    ([torch.ones(1), (torch.zeros(2), [torch.ones(3)])], {}),
    (Pair(torch.ones(1), 2), {"x": Pair([torch.ones(2)], None)}),
    (torch.Size([2, 3]), collections.OrderedDict(b=torch.ones(1), a=[1, 2])),
    ((), {}),
]


def tag(x):
    """A leaf function that changes tensors and ints, as the recorder's ``_arg`` does."""
    if isinstance(x, torch.Tensor):
        return ("tensor", tuple(x.shape))
    return ("int", x) if isinstance(x, int) and not isinstance(x, bool) else x


def test_map_equals_tree_map():
    for case in CASES:
        assert recorder._map(tag, case) == tree_map(tag, case)
        assert type(recorder._map(tag, case)[0]) is type(tree_map(tag, case)[0])


def test_leaves_equal_tree_leaves():
    for case in CASES:
        ours, theirs = recorder.leaves(case), tree_leaves(case)
        assert len(ours) == len(theirs)
        assert all(a is b for a, b in zip(ours, theirs))


def test_outside_torch_memo_gives_the_uncached_answer():
    """Torch's and the tracer's files are inside, a model's file outside, asked twice (memoized)."""
    torch_file = os.path.join(os.path.dirname(torch.__file__), "nn", "modules", "linear.py")
    paths = {torch_file: False, recorder.__file__: False, "/somewhere/model.py": True,
             "/usr/lib/python3.11/contextlib.py": False}
    for _ in range(2):
        for path, outside in paths.items():
            assert recorder.outside_torch(path) is outside
    # a relative path is resolved against the current directory each time, never memoized
    assert recorder.outside_torch("model.py") is True
    assert "model.py" not in recorder._OUTSIDE
