"""Each compiled kernel calls its own copies of the kernels it calls.

Numba compiles every ``@njit`` function into a library of its own and links the
optimized LLVM module of each callee into its caller's module, marked
``linkonce_odr`` ("all definitions are the same", so the linker may keep any one).
The caller's module is then optimized again, callees included, so each caller holds
its own copy of a callee, and under ``config.FASTMATH`` (reassociation, FMA
contraction) the copies are not the same bits: ``field.ffn_vjp`` optimized inside
``field.rhs_vjp`` rounds differently from ``field.ffn_vjp`` compiled on its own. The
JIT linker binds every call of a ``linkonce_odr`` function to the first definition
loaded into the process, so which copy runs depended on the load order: a fresh
compile loads each callee's own library before its caller, a caller read from Numba's
cache brings its copies first, and a kernel loaded later used an earlier kernel's
copies. λ̂ (the VJP) and pair-mode ``log r`` differed in the last bits between a run
whose kernels were compiled and one that loaded them from the cache.

:class:`LocalCallsLibrary` makes the copies inside a tfkernels library ``internal``
just before its module is compiled to machine code (after all optimization, so the
code is the same instructions as before): every call then goes to the caller's own
copy, and a kernel's result depends only on its own compiled code, the same whether
it was compiled in this process or read from the cache, and whatever ran before it.
The module that other callers link (and the cache stores for them) keeps the
``linkonce_odr`` form, so their optimization sees what it saw before. Libraries that
define no tfkernels function are left as Numba builds them.
"""

import llvmlite.binding as ll
from numba.core import codegen

#: Numba's mangled names of functions of this package begin with this.
PREFIX = "_ZN9tfkernels"


def _module_for_linking(mod):
    """What ``CPUCodeLibrary._get_module_for_linking`` makes of ``mod``: a clone with
    its external definitions ``linkonce_odr``."""
    shared = mod.clone()
    for fn in shared.functions:
        if not fn.is_declaration and fn.linkage == ll.Linkage.external:
            fn.linkage = ll.Linkage.linkonce_odr
    return shared


class LocalCallsLibrary(codegen.JITCPUCodegen._library_class):
    """Numba's JIT code library with the linked-in copies of a tfkernels library bound
    locally (see the module docstring)."""

    def _finalize_final_module(self):
        mod = self._final_module
        defined = [fn for fn in mod.functions if not fn.is_declaration]
        ours = any(
            fn.linkage == ll.Linkage.external and fn.name.startswith(PREFIX) for fn in defined
        )
        copies = [fn for fn in defined if fn.linkage == ll.Linkage.linkonce_odr]
        if ours and copies:
            if self._shared_module is None:
                self._shared_module = _module_for_linking(mod)
            for fn in copies:
                fn.linkage = ll.Linkage.internal
        super()._finalize_final_module()


def install():
    """Make Numba's JIT codegen build :class:`LocalCallsLibrary` libraries (idempotent)."""
    if not issubclass(codegen.JITCPUCodegen._library_class, LocalCallsLibrary):
        codegen.JITCPUCodegen._library_class = LocalCallsLibrary
