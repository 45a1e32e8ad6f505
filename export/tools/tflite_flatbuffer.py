"""A `.tflite` as the TFLite schema's object tree and back, every weight inside the flatbuffer.

ai-edge-quantizer stores large weights after the flatbuffer, at offsets the flatbuffer records. A
tool that rewrites the flatbuffer through the schema's object API keeps the offsets and drops the
bytes after it (mediapipe's metadata populator does), so the models are rewritten with their
weights inside first. LiteRT's own reader (ai_edge_litert.tools.flatbuffer_utils) brings them in as
bytes, which the generated `Pack` writes one byte per Python call (minutes for a full-size model):
here they become numpy arrays, packed in one copy.
"""
from __future__ import annotations

import numpy as np


def read(model: bytes):
    """The model's object tree (`schema_py_generated.ModelT`), its weights inline as uint8 arrays."""
    from ai_edge_litert.tools import flatbuffer_utils
    root = flatbuffer_utils.read_model_from_bytearray(model)
    for buffer in root.buffers or ():
        if buffer.data is not None and not isinstance(buffer.data, np.ndarray):
            buffer.data = np.frombuffer(buffer.data, np.uint8)
    return root


def write(root, size_hint: int = 0) -> bytes:
    """The flatbuffer of an object tree from `read`."""
    import flatbuffers
    builder = flatbuffers.Builder(size_hint + (1 << 20))  # room for the weights: no regrowth copies
    builder.Finish(root.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def inline_buffers(model: bytes) -> bytes:
    """`model` with every weight inside the flatbuffer; a model that has them there already, as it is."""
    from ai_edge_litert import schema_py_generated as schema
    flat = schema.Model.GetRootAs(model, 0)
    if not any(flat.Buffers(i).Offset() > 1 for i in range(flat.BuffersLength())):
        return model
    return write(read(model), len(model))
