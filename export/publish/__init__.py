"""Publishing (TensorFlow only, never JAX): TF Hub packages with their sha256, model cards, and the
TF Serving configuration of an `exported/` tree."""
