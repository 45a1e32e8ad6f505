"""The runtime core: no TensorFlow, no backend. What every backend and every command shares: the
model base (`vila_tf.core.model`), tasks, results, zero-shot pairs, ranking, the decode pipeline,
export metadata and atomic files."""
