"""Everything compiled, for the public API and for tools that build on the kernels.

Read top-down:

* :mod:`~tfkernels.kernels.jit` — the compile decorators, flags from ``config``;
* :mod:`~tfkernels.kernels.simd` — explicit SIMD vectors and the register-tiled
  products of the two layouts (``gemm`` for rows, ``lgemm`` for lanes);
* :mod:`~tfkernels.kernels.maths` — exp, erfc, GELU, activations and their derivatives,
  the column softmax, finiteness tests, norms;
* :mod:`~tfkernels.kernels.rng` — the counter-based random numbers;
* :mod:`~tfkernels.kernels.structs` — the named structures the kernels take (weights,
  settings, schedule, scratch, the two layouts) and the Python that builds them;
* :mod:`~tfkernels.kernels.attention` — attention, its JVP and VJP, per layout;
* :mod:`~tfkernels.kernels.layout` — the primitives that differ between layouts;
* :mod:`~tfkernels.kernels.norms` — the token norms, the sphere's tangent projection
  and their derivatives;
* :mod:`~tfkernels.kernels.field` — the (sub-)fields, their JVP and VJP, written once;
* :mod:`~tfkernels.kernels.steps` — a layer of the block (its sub-steps and post
  norms), of a state and of its tangent;
* :mod:`~tfkernels.kernels.geometry` — the token geometry of a state (its drivers
  measure it at the saved layers);
* :mod:`~tfkernels.kernels.drivers` — all layers of many trajectories in one call;
* :mod:`~tfkernels.kernels.dispatch` — layout choice, buffers, threads.

Nothing here imports the public API (:mod:`tfkernels.api`) or the studies.
"""

from .dispatch import (
    decay_kernel,
    ensemble_final_norm,
    final_norm,
    geometry_kernel,
    integrate,
    jvp_kernel,
    layer_jvp_kernel,
    lyapunov_kernel,
    vector_field,
    vjp_kernel,
)
from .drivers import MODE_PAIR, MODE_TANGENT
from .structs import (
    STATUS_OK,
    Block,
    GeometryConfig,
    Model,
    Schedule,
    Settings,
    Weights,
    aligned_buffers,
    empty_aligned,
    pack_params,
    rank_primes,
    use_lanes,
)

__all__ = [
    "MODE_PAIR",
    "MODE_TANGENT",
    "STATUS_OK",
    "Block",
    "GeometryConfig",
    "Model",
    "Schedule",
    "Settings",
    "Weights",
    "aligned_buffers",
    "decay_kernel",
    "empty_aligned",
    "ensemble_final_norm",
    "final_norm",
    "geometry_kernel",
    "integrate",
    "jvp_kernel",
    "layer_jvp_kernel",
    "lyapunov_kernel",
    "pack_params",
    "rank_primes",
    "use_lanes",
    "vector_field",
    "vjp_kernel",
]
