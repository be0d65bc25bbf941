"""Everything compiled: SIMD vectors and products, maths functions, the counter-based
RNG, the vector field and its JVP/VJP, the steps and the fused drivers.

Nothing here imports the public API (:mod:`tfkernels.api`) or the studies.
"""

from .rows import STATUS_OK, aligned_buffers, empty_aligned, pack_params

__all__ = ["STATUS_OK", "aligned_buffers", "empty_aligned", "pack_params"]
