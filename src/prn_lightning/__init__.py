"""prn-lightning: PRN (Prototypical Residual Network, CVPR 2023) on PyTorch Lightning."""
__version__ = "0.1.0"
