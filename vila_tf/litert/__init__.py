"""The LiteRT backend of the runtime: `vila_tf.load(LITERT_DIR)` on the image heads written by
`python -m export litert` (docs/on_device.md), with ai-edge-litert, numpy and Pillow only.

An integration, like vila_tf.beam: the runtime core never imports it, and it never imports
TensorFlow (an import-linter contract in setup.cfg). Nothing is imported here, so `import vila_tf`
stays light; `vila_tf.load` dispatches to `vila_tf.litert.model` on a folder holding
`vila_litert.json`.
"""
