"""Reference pruners, one module per method, each shaped *score -> mask -> apply*.

See :mod:`course_lib.pruning.common` for the conventions every method follows.
"""

from .common import apply_masks, check_nm, check_sparsity, model_sparsity, sparsity_of  # noqa: F401
