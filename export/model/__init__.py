"""The VILA model and its parameters (JAX/Flax, no TensorFlow): the configuration read off the
parameter shapes, the Flax modules named like the praxis tree, the pure head functions the export
lowers, caption decoding, parameter sources read one array at a time, and the demo weights."""
