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
* :data:`OVERLOAD_FLAGS`, :func:`is_layout` — for the layout primitives of
  :mod:`tfkernels.kernels.layout`: one name, one implementation per kernel layout,
  chosen when the caller is compiled.
"""

from numba import njit, types

from .. import config

_FLAGS = dict(cache=config.CACHE, fastmath=config.FASTMATH, error_model=config.ERROR_MODEL,
              _nrt=config.WORKER_NRT)

jit = njit(**_FLAGS)
ijit = njit(inline="always", **_FLAGS)
djit = njit(nogil=True, **_FLAGS)


#: Flags of the layout primitives' implementations (``numba.extending.overload``
#: compiles them inside their caller, which is cached; they take no ``cache`` flag).
OVERLOAD_FLAGS = {k: v for k, v in _FLAGS.items() if k != "cache"}


def is_layout(layout, cls):
    """In an overload's typing function: whether the Numba type ``layout`` is the
    named tuple ``cls`` (``structs.Rows`` or ``structs.Lanes``)."""
    return isinstance(layout, types.BaseNamedTuple) and layout.instance_class is cls
