"""Fused CPU kernels for the Gaunt grid product (C, compiled on first use, called through ctypes).

The whole chain ``((u @ T1) * (v @ T2)) @ T3`` runs row by row with the grid values in a stack
buffer, so no ``[rows, P]`` intermediate is written to memory (the plain PyTorch chain writes
several). See :mod:`.fused` for the autograd wrapper and :mod:`.build` for compilation.
"""
from .build import cpu_kernels_available, cpu_kernels_unavailable_reason
from .fused import grid_product_fused
from .ops import conv_product, many_body_product, use_fused_kernels, weighted_product

__all__ = ["grid_product_fused", "cpu_kernels_available", "cpu_kernels_unavailable_reason", "use_fused_kernels",
           "weighted_product", "conv_product", "many_body_product"]
