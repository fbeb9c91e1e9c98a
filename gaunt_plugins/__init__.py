"""gaunt-plugins: Gaunt tensor products (Luo, Chen & Zhang, ICLR 2024) for MACE and EquiformerV2.

Public API:

- :func:`gaunt_product`: the functional op (exact grid or 2D-Fourier method).
- :class:`GauntTensorProduct`, :class:`GauntConvolution`, :class:`GauntManyBody`: the layers.
- :mod:`gaunt_plugins.math`: the float64 tables (harmonics, grids, Fourier tables, Gaunt coefficients).
- :func:`patch` / :func:`unpatch` / :func:`patched`: apply a framework patch (``"mace"``, ``"fairchem"``)
  found through the ``gaunt_plugins.patches`` entry points.
"""
from .layers import GauntConvolution, GauntManyBody, GauntTensorProduct
from .ops import gaunt_product
from .patch import patch, patched, unpatch  # noqa: E402  (the functions shadow the module name on purpose)

__version__ = "0.1.0"

__all__ = ["gaunt_product", "GauntTensorProduct", "GauntConvolution", "GauntManyBody", "patch", "unpatch", "patched",
           "__version__"]
