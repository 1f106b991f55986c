"""Trading logic around the compiled core."""
