"""The compiled hot path: order book, level parser and Numba kernels. No I/O here."""
