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
  whose order of operations is what keeps them from overflowing, and the token
  geometry, whose cosines must be the NumPy reference's bits;
* :data:`sijit` — the same, inlined into its (strict) caller at the Numba-IR level;
* :func:`by_block` — a function whose body is chosen when its caller is compiled,
  from the type of the model's block (``structs.PlainBlock`` or ``structs.Block``),
  so that the paper's plain field compiles none of the norm and projection code it
  never runs (``docs/performance.md``, "Cold start").

Importing this module installs :class:`.linking.LocalCallsLibrary`: every compiled
kernel calls its own copies of its callees, so that its bits do not depend on
whether it came from Numba's cache or on what ran before it.
"""

import functools

from numba import njit
from numba.extending import overload

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
sijit = njit(inline="always", **{**_FLAGS, "fastmath": config.SCALED_FASTMATH})
cjit = njit(**{**_FLAGS, "fastmath": config.CONTRACT_FASTMATH})


def by_block(plain):
    """Make the decorated function (a step of the block code: a norm, a projection) a
    compiled-code function that runs ``plain`` instead when its ``model`` argument's
    block is a ``structs.PlainBlock`` (the paper's parallel field: no norm, one
    sub-step).

    The body is chosen from Numba types when a caller is compiled (an ``overload``
    keyed on the model's type), so the kernels of the plain field never type the norm
    and projection functions, and never compile them: on a cold cache that is most of
    what the block code cost the paper's model (``docs/performance.md``, "Cold
    start"). The bodies are called, not inlined: an inlined overload's IR trips a
    scope check of Numba's SSA pass, and these calls do enough work per call for a
    call not to matter; they return nothing. ``plain`` and the decorated function take
    the same arguments, one of them named ``model``; the result is callable only from
    compiled code.
    """

    def decorate(full):
        names = full.__code__.co_varnames[: full.__code__.co_argcount]
        where = names.index("model")

        def stub(*args):
            raise TypeError(f"{full.__name__} runs in compiled code only")

        functools.update_wrapper(stub, full)
        # the typing function must have the implementations' signature (Numba checks it)
        src = f"def select({', '.join(names)}):\n    return choose({names[where]})\n"
        scope = {"choose": lambda model: plain if is_plain_type(model) else full}
        exec(src, scope)
        overload(stub, jit_options=_OVERLOAD_FLAGS)(scope["select"])
        return stub

    return decorate


def is_plain_type(model):
    """Whether the Numba type of a ``structs.Model`` has a ``structs.PlainBlock``."""
    from .structs import Model, PlainBlock

    return model.types[Model._fields.index("block")].instance_class is PlainBlock


#: Flags of the bodies :func:`by_block` chooses: those of :data:`jit` (the caller's
#: cache holds them).
_OVERLOAD_FLAGS = {k: v for k, v in _FLAGS.items() if k != "cache"}
