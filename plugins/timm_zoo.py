"""Old import path of :mod:`tinysaver.plugins.timm.zoo` (the Fashion-MNIST pool registered with
timm), kept so that ``import tinysaver.plugins.timm_zoo`` in users' code still works: it *is* that
module (timm's ``register_model`` rewrites the module's ``__all__``, so a star import would miss
its functions)."""
import sys

from .timm import zoo

sys.modules[__name__] = zoo
