"""Inputs: paths, folders, globs, bytes, arrays and PIL images, walked lazily; image formats
and the decode budget. No TensorFlow."""
