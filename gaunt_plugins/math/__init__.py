"""The math of Gaunt products: float64 NumPy tables, cached per degree, no torch.nn.

- :mod:`.spherical_harmonics`: e3nn's real spherical harmonics (orthonormal).
- :mod:`.s2_grid`: Gauss-Legendre x uniform product grids exact for a product degree.
- :mod:`.fourier`: spherical harmonics <-> 2D Fourier tables (the paper's FFT path).
- :mod:`.gaunt`: the Gaunt coefficients themselves and the path rule.
"""
from .fourier import fourier_to_sh_dense, sh_to_fourier_dense, sh_to_fourier_sparse
from .gaunt import gaunt_coefficients, gaunt_path_allowed, gaunt_paths
from .s2_grid import MAX_DEGREE, bracket_grid_tables, grid_shape, grid_tables, power_grid_tables, s2_product_grid
from .spherical_harmonics import real_sph_harm, sph_index

__all__ = [
    "real_sph_harm",
    "sph_index",
    "grid_shape",
    "s2_product_grid",
    "grid_tables",
    "power_grid_tables",
    "MAX_DEGREE",
    "sh_to_fourier_sparse",
    "sh_to_fourier_dense",
    "fourier_to_sh_dense",
    "gaunt_coefficients",
    "gaunt_path_allowed",
    "gaunt_paths",
]
