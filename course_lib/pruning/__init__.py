"""Reference pruners, one module per method, each shaped *score -> mask -> apply*.

See :mod:`course_lib.pruning.common` for the conventions every method follows.
"""

from .common import apply_masks, check_nm, check_sparsity, model_sparsity, sparsity_of  # noqa: F401
from .magnitude import (  # noqa: F401
    keep_mask_from_scores,
    magnitude_mask,
    magnitude_prune,
    magnitude_scores,
    make_permanent,
    masks_from_torch_prune,
    to_torch_prune,
)
from .nm import is_nm_sparse, nm_mask, nm_prune, semi_structured_support, to_semi_structured  # noqa: F401
from .channels import channel_importance, channel_mask, remove_ffn_channels  # noqa: F401
from .channels import (  # noqa: F401
    channel_fluctuation,
    channel_mean_mask,
    channel_means,
    compensation_biases,
    remove_ffn_channels_compensated,
)
from .heads import head_gates, head_importance, head_mask, remove_heads  # noqa: F401
from .structure import layer_structure, load_pruned, save_pruned  # noqa: F401
from .depth import (  # noqa: F401
    block_influence,
    layer_gates,
    layer_importance,
    layer_mask,
    layers_to_remove,
    remove_layers,
)
from .calibration import input_channel_norms  # noqa: F401
from .movement import (  # noqa: F401
    cubic_sparsity,
    gradient_sensitivity_prune,
    gradient_sensitivity_scores,
    gradual_magnitude_prune,
    movement_prune,
    movement_score_update,
    movement_scores,
)
from .sparsegpt import sparsegpt_prune, sparsegpt_prune_weight  # noqa: F401
from .wanda import wanda_mask, wanda_prune, wanda_scores  # noqa: F401
