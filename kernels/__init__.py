"""The convolution core: im2col, col2im, max-pool forward/backward (filled in by the kernel work)."""
