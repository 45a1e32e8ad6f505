"""vila-tf runtime: exported VILA models with TensorFlow only (never imports jax or flax).

    import vila_tf
    model = vila_tf.load("exported/vila_r")
    model.score(["photo.jpg"])
    for r in model.stream("score", ["photos/"]):  # results as they come (docs/streaming.md)
        print(r.source, r.value, r.error)
"""
from vila_tf.core.model import Model, UnsupportedTaskError
from vila_tf.core.results import DemoModelWarning, ImageError, Result
from vila_tf.savedmodel.tf_compat import IncompatibleTensorFlowError

__all__ = ["load", "Model", "UnsupportedTaskError", "VilaModel", "ImageError", "Result", "DemoModelWarning", "IncompatibleTensorFlowError"]


def load(path: str, device=None, max_workers=None, exif_orientation: bool = True, variant=None,
         decode_budget_pixels=None, max_file_bytes=None):
    """Loads an exported VILA model (SavedModel folder or TF Serving base folder: newest version),
    or the LiteRT image heads written by `python -m export litert` (no TensorFlow needed; `variant`
    "float32", "float16" or "int8", default float32: docs/on_device.md).

    `exif_orientation=False` scores photos as stored, exactly as the release did, instead of
    turned upright by their EXIF orientation tag (docs/formats.md). `decode_budget_pixels`: how
    many pixels the decode threads may decode at once (default 64 million); `max_file_bytes`: a
    larger file is refused before it is read (default 500 MB) (docs/streaming.md)."""
    from vila_tf.litert import format as litert_format
    if litert_format.is_litert_dir(path):
        if device:
            raise ValueError(f"device={device!r}: a LiteRT export runs on this machine's CPU here "
                             "(a phone app picks its GPU delegate itself, docs/on_device.md)")
        from vila_tf.litert import model as litert_model
        return litert_model.LiteRTModel(path, variant, max_workers=max_workers, exif_orientation=exif_orientation,
                                        decode_budget_pixels=decode_budget_pixels, max_file_bytes=max_file_bytes)
    if variant:
        raise ValueError(f"variant={variant!r}: only a LiteRT export has variants; {path} is not one")
    # TensorFlow is imported here, when a SavedModel is loaded, not by `import vila_tf`.
    from vila_tf.savedmodel import model
    return model.VilaModel(path, device=device, max_workers=max_workers, exif_orientation=exif_orientation,
                           decode_budget_pixels=decode_budget_pixels, max_file_bytes=max_file_bytes)


def __getattr__(name):
    # Lazy: `import vila_tf` stays light (no TensorFlow) until a model is loaded.
    if name == "VilaModel":
        from vila_tf.savedmodel import model
        return model.VilaModel
    if name == "LiteRTModel":
        from vila_tf.litert import model
        return model.LiteRTModel
    raise AttributeError(f"module 'vila_tf' has no attribute {name!r}")
