"""Pruning methods, one file each, registered by name (see `make_method`).

Importing this package registers the built-in methods and statistics, so `make_method` and
`list_methods` find them whichever module of the package was imported first.
"""

from prunelab.methods import statistics  # noqa: F401  (registers the built-in statistics)
from prunelab.methods.registry import list_methods, make_method, option_help, register  # noqa: F401
from prunelab.methods import magnitude, sparsegpt, wanda  # noqa: F401,E402  (register themselves)
from prunelab.methods import gptq, rtn  # noqa: F401,E402  (quantizers, registered the same way)
from prunelab.methods import (besa, dsnot, gblm, owl, random_prune,  # noqa: F401,E402
                               sparsity_map, wanda_variant)
from prunelab.methods import flap, seap, ssm_flap, structured  # noqa: F401,E402  (structured)
