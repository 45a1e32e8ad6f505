"""SavedModel assembly (JAX -> TensorFlow): lowering the heads with jax2tf, the weights as
variables streamed into the SavedModel, in-graph tokenization, TF Serving warmup, and the table of
TensorFlow releases an export can target."""
