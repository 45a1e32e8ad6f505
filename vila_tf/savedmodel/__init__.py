"""The SavedModel backend of the model core: `VilaModel` loads a TensorFlow SavedModel, decodes
photos on the host with the graph's own ops (host_decode) and runs the pixel signatures on batches
padded to the export's buckets (runner). The only runtime package that imports TensorFlow."""
