import pytest
import torch

from course_lib.pruning import magnitude_mask as alias
from course_lib.pruning.magnitude import magnitude_mask
from course_lib.testing import ReferenceDisabledError, reference_disabled


def test_reference_disabled_catches_every_alias_and_restores():
    w = torch.randn(6, 8)
    expected = magnitude_mask(w, 0.5)
    with reference_disabled(magnitude_mask):
        with pytest.raises(ReferenceDisabledError, match="magnitude_mask is disabled"):
            alias(w, 0.5)
        with pytest.raises(ReferenceDisabledError):
            magnitude_mask(w, sparsity=0.5)
    assert torch.equal(alias(w, 0.5), expected)


def test_reference_restored_after_an_exception():
    with pytest.raises(KeyError):
        with reference_disabled(magnitude_mask):
            raise KeyError("boom")
    assert magnitude_mask(torch.ones(4), 0.25).sum() == 3


def test_reference_disabled_rejects_non_functions():
    with pytest.raises(TypeError):
        with reference_disabled(torch.topk):
            pass
