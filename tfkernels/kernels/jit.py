"""The compile decorators of every kernel, with their flags from :mod:`tfkernels.config`.

* :data:`jit` — a serial worker: no reference counting (``config.WORKER_NRT``), it
  allocates nothing;
* :data:`ijit` — the same, inlined into its caller at the Numba-IR level, so that
  LLVM sees one straight-line loop body to vectorize (its own inliner gives up on a
  body as large as the erfc's);
* :data:`djit` — a driver: serial over its slice of the batch, GIL-free, so that
  :func:`tfkernels.threads.run_threads` runs slices in parallel threads; it allocates
  nothing either (its buffers come from Python, :mod:`tfkernels.kernels.structs`), so
  no atomic incref/decref pairs surround the inlined layer step
  (``docs/performance.md``, "Drivers without reference counting");
* :data:`cjit` — a small function compiled with contraction (FMA) as its only
  fast-math flag (``config.CONTRACT_FASTMATH``), left to LLVM's inliner: its
  instructions keep their own flags inside the caller's loop, so the caller's
  reassociation cannot regroup them differently in different kernels (float32's
  GELU polynomial, whose bits the row and lane kernels must share);
* :data:`sjit` — a serial worker compiled with strict IEEE arithmetic
  (``config.SCALED_FASTMATH``): the scaled norms and rescaling of the decay study,
  whose order of operations is what keeps them from overflowing.

Importing this module installs :class:`.linking.LocalCallsLibrary`: every compiled
kernel calls its own copies of its callees, so that its bits do not depend on
whether it came from Numba's cache or on what ran before it.
"""

from numba import njit

from .. import config
from . import linking

linking.install()

_FLAGS = dict(
    cache=config.CACHE,
    fastmath=config.FASTMATH,
    error_model=config.ERROR_MODEL,
    _nrt=config.WORKER_NRT,
)

jit = njit(**_FLAGS)
ijit = njit(inline="always", **_FLAGS)
djit = njit(nogil=True, **_FLAGS)
sjit = njit(**{**_FLAGS, "fastmath": config.SCALED_FASTMATH})
cjit = njit(**{**_FLAGS, "fastmath": config.CONTRACT_FASTMATH})
