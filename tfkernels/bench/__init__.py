"""The benchmark harness: tfkernels against NumPy, PyTorch and JAX on the same flows."""
