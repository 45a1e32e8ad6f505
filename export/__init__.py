"""vila-tf's build-time toolkit (JAX + Flax + TensorFlow), run as `python -m export`: reads the
released checkpoints (`checkpoints/`) into the Flax model (`model/`), lowers it into SavedModels
(`savedmodel/`), publishes them (`publish/`), and tools over finished exports (`tools/`)."""

# How a user runs the toolkit: `python -m export` in a checkout, `python -m vila_tf_export` from the wheel.
PROG = f"python -m {__name__}"
