"""Importers of real transformer checkpoints into :class:`~tfkernels.TransformerParams`.

Public through the class methods ``TransformerParams.from_torch`` (a PyTorch
``nn.TransformerEncoderLayer`` or ``nn.TransformerEncoder``, :mod:`.torch_import`) and
``TransformerParams.from_safetensors`` (the blocks of a BERT- or GPT-2-style checkpoint,
:mod:`.safetensors_import`). Both produce per-layer weights with ``block="sequential"``
and Δt = 1 in mind: ``integrate(p, x, n_layers=L, t_final=L, method="euler")`` is the
source model's forward pass on hidden states ``x`` (embeddings, position encodings and
poolers are not blocks and are not imported).

The optional dependencies (``torch``, ``safetensors``) are imported inside the functions
that need them; install them with ``pip install "tfkernels[models]"``.
"""

from .safetensors_import import from_safetensors
from .torch_import import from_torch

__all__ = ["from_torch", "from_safetensors"]
