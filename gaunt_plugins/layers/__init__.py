"""Gaunt layers (``torch.nn.Module``, e3nn ``Irreps`` at the boundary, TorchScript-able)."""
from ._planned import LAYER_METHODS
from .convolution import GauntConvolution
from .many_body import GauntManyBody
from .path_convolution import GauntPathConvolution
from .tensor_product import GauntTensorProduct

__all__ = ["GauntTensorProduct", "GauntConvolution", "GauntPathConvolution", "GauntManyBody", "LAYER_METHODS"]
