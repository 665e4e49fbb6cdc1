"""Every compared method, one module each, registered by importing this package.

A module registers its builder with :func:`register_method` and the traits the harness needs (see
:class:`Method`); the import order below is the order of every table (the committed ones first).
"""

from .registry import Method, Recipe, check_method_options, get_method, method_names, methods, register_method

from . import sdlora, seq_lora, ncm, l2p, naive, lwf, ewc, joint  # noqa: E402,F401  (order of the committed tables)
from . import simplecil, dualprompt, coda_prompt, inflora, ranpac, aper  # noqa: E402,F401
from . import sdlora_ablations  # noqa: E402,F401  (issue 19: the Table 4 rows)

__all__ = ["Method", "Recipe", "register_method", "get_method", "method_names", "methods", "check_method_options"]
from . import cl_lora  # noqa: E402,F401  (issue 31)
from . import mos  # noqa: E402,F401  (issue 31)
from . import care  # noqa: E402,F401  (issue 31)
