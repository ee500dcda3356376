"""``symcx.collector.fewer_collections``: thresholds raised and old objects frozen while symcx works, all restored."""

import gc

import pytest
import torch

import symcx
from symcx.collector import THRESHOLDS, fewer_collections


@pytest.fixture
def restore_gc():
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*threshold)
    (gc.enable if enabled else gc.disable)()
    gc.unfreeze()


def test_thresholds_raised_old_objects_frozen_and_both_restored(restore_gc):
    gc.set_threshold(700, 10, 10)
    with fewer_collections():
        assert gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0


def test_higher_thresholds_of_the_caller_are_kept(restore_gc):
    gc.set_threshold(100_000, 5, 500)
    with fewer_collections():
        assert gc.get_threshold() == (100_000, 50, 500)
    assert gc.get_threshold() == (100_000, 5, 500)


@pytest.mark.parametrize("caller", ["disabled", "threshold 0", "frozen"])
def test_a_callers_own_collector_settings_are_left_alone(restore_gc, caller):
    if caller == "disabled":
        gc.disable()
    elif caller == "threshold 0":
        gc.set_threshold(0)
    else:
        gc.freeze()
    # A frozen object that is freed leaves the permanent generation (another thread, such as a
    # pytest-xdist worker's, may free one at any time), so the caller's freeze shows as a count > 0.
    before = (gc.get_threshold(), gc.isenabled(), gc.get_freeze_count() > 0)
    with fewer_collections():
        assert (gc.get_threshold(), gc.isenabled(), gc.get_freeze_count() > 0) == before
    assert (gc.get_threshold(), gc.isenabled(), gc.get_freeze_count() > 0) == before


def test_restored_when_the_analysis_fails(restore_gc):
    gc.set_threshold(700, 10, 10)

    class Bad(torch.nn.Module):
        def forward(self, x):
            return x.nonzero().sum() if x.sum() > 0 else x

    with pytest.raises(symcx.SymcxError):
        symcx.analyze(Bad(), torch.randn(2, 3))
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0
