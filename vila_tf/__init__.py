"""vila-tf runtime: exported VILA models with TensorFlow only (never imports jax or flax).

    import vila_tf
    model = vila_tf.load("exported/vila_r")
    model.score(["photo.jpg"])
    for r in model.stream("score", ["photos/"]):  # results as they come (docs/streaming.md)
        print(r.source, r.value, r.error)
"""
__all__ = ["load", "VilaModel", "ImageError", "Result", "DemoModelWarning", "IncompatibleTensorFlowError"]


def __getattr__(name):
    # Lazy: `vila_tf.signatures` / `vila_tf.buckets` stay importable without loading TensorFlow.
    if name in __all__:
        from vila_tf import model
        return getattr(model, name)
    raise AttributeError(f"module 'vila_tf' has no attribute {name!r}")
