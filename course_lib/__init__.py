"""course_lib: the library behind the pruning course.

Entry points::

    model, tok = course_lib.load_course_model()
    course_lib.perplexity(model)                 # eval split, exact token-weighted
    course_lib.finetune(model, steps=100, lr=1e-3, masks=masks)
    course_lib.load_model("/path/to/llama")      # any local Llama-family checkpoint
"""

from .evaluation import perplexity, token_losses  # noqa: F401
from .model import load_course_model, load_model, prunable_linears  # noqa: F401
from .paths import data_dir  # noqa: F401
from .pruning.structure import layer_structure, load_pruned, save_pruned  # noqa: F401
from .training import finetune  # noqa: F401

__version__ = "0.1.0"
