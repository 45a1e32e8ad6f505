"""The SavedModel backend: TensorFlow's in-graph decoder and the bucketed signature runner."""
