"""The MediaPipe-ready copy of a converted LiteRT model: the same graph, a fixed input.

MediaPipe Tasks (ImageEmbedder, ImageClassifier) resize each photo to the model's input tensor as
the model stores it, and read its heads in the order of the graph's outputs. The LiteRT models
take any size (the input's static shape is [1, 1, 1, 3], only its shape signature is free), so
MediaPipe would shrink every photo to one pixel. This copy stores the input as uint8
[1, 272, 272, 3], the size the release's preprocessing resizes to first: MediaPipe's resize stands
in for that step, and the model's own resize (TF1 bilinear, no half-pixel centers) maps 272 to 272
at scale 1, reading every pixel as it is. The center crop and /255 stay inside. Every tensor after
the resize already has a static shape (export/tools/litert_graph.py), so only the input changes;
the outputs are listed in the contract's order (vila_tf.litert.format.OUTPUTS), which MediaPipe
reports as its heads' order. No conversion: the flatbuffer is rewritten through the TFLite
schema's object tree (export/tools/tflite_flatbuffer.py), weights and ops untouched.
"""
from __future__ import annotations

from typing import Sequence

from vila_tf.litert import format as litert_format
from . import tflite_flatbuffer


def fixed_input_model(model: bytes, outputs: Sequence[str]) -> bytes:
    """`model` (one signature, `image`) with its input fixed at MEDIAPIPE_INPUT_SHAPE and its
    subgraph's outputs in the order of `outputs` (signature output names). Weights stored after
    the flatbuffer (ai-edge-quantizer writes them so) come back inside it."""
    root = tflite_flatbuffer.read(model)
    (signature,) = root.signatureDefs
    graph = root.subgraphs[signature.subgraphIndex]
    for tensor_map in signature.inputs:
        tensor = graph.tensors[tensor_map.tensorIndex]
        tensor.shape = list(litert_format.MEDIAPIPE_INPUT_SHAPE)
        tensor.shapeSignature = list(litert_format.MEDIAPIPE_INPUT_SHAPE)
    index = {o.name.decode(): o.tensorIndex for o in signature.outputs}
    if sorted(index) != sorted(outputs):
        raise ValueError(f"the model's outputs {sorted(index)} are not {sorted(outputs)}")
    graph.outputs = [index[name] for name in outputs]
    return tflite_flatbuffer.write(root, len(model))

