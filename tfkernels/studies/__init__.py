"""Monte Carlo studies on the fused kernels."""
