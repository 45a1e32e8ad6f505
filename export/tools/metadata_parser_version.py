"""The minimum metadata parser version of a TFLite Model Metadata buffer, for mediapipe's writer.

mediapipe's metadata writer (`mediapipe.tasks.python.metadata`) asks a compiled module,
`mediapipe.tasks.cc.metadata.python._pywrap_metadata_version`, which version of the metadata
parser a buffer needs, and writes it into the metadata (`min_parser_version`). The mediapipe
wheels built on its C API (0.10.30 and later, 1.x included) no longer ship that module, so the
writer fails at import. `install()` puts a module of the same name in its place, computing the
version by the rules of mediapipe's `metadata_version.cc`: 1.0.0, raised by each later schema
member the buffer holds. A mediapipe that ships the compiled module keeps its own.
"""
from __future__ import annotations

import importlib
import sys
import types

MODULE = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
DEFAULT = (1, 0, 0)


def minimum_parser_version(buffer: bytes) -> str:
    """"X.Y.Z": the newest schema member the ModelMetadata flatbuffer `buffer` uses."""
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb
    versions = [DEFAULT]
    unit_versions = {fb.ProcessUnitOptions.BertTokenizerOptions: (1, 1, 0),
                     fb.ProcessUnitOptions.SentencePieceTokenizerOptions: (1, 1, 0),
                     fb.ProcessUnitOptions.RegexTokenizerOptions: (1, 2, 1)}

    def files(items):
        for f in items or ():
            if f.type == fb.AssociatedFileType.VOCABULARY:
                versions.append((1, 0, 1))
            if f.type == fb.AssociatedFileType.SCANN_INDEX_FILE:
                versions.append((1, 4, 0))
            if f.version is not None:
                versions.append((1, 4, 1))

    def units(items):
        versions.extend(unit_versions.get(u.optionsType, DEFAULT) for u in items or ())

    def tensor(t):
        files(t.associatedFiles)
        units(t.processUnits)
        if t.content is not None and t.content.contentPropertiesType == fb.ContentProperties.AudioProperties:
            versions.append((1, 3, 0))

    meta = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(buffer, 0))
    for sg in meta.subgraphMetadata or ():
        for t in (sg.inputTensorMetadata or []) + (sg.outputTensorMetadata or []):
            tensor(t)
        files(sg.associatedFiles)
        # A field that is present counts, even empty (as the C++ checks the vector, not its size).
        for present, version in ((sg.inputProcessUnits, (1, 1, 0)), (sg.outputProcessUnits, (1, 1, 0)),
                                 (sg.inputTensorGroups, (1, 2, 0)), (sg.outputTensorGroups, (1, 2, 0)),
                                 (sg.customMetadata, (1, 5, 0))):
            if present is not None:
                versions.append(version)
        units(sg.inputProcessUnits)
        units(sg.outputProcessUnits)
    files(meta.associatedFiles)
    return ".".join(map(str, max(versions)))


def install() -> None:
    """Makes `mediapipe.tasks.python.metadata` importable: the compiled module if mediapipe has it,
    else `minimum_parser_version` under its name."""
    try:
        importlib.import_module(MODULE)
        return
    except ImportError:
        pass
    parts = MODULE.split(".")
    for i in range(3, len(parts)):  # mediapipe.tasks.cc, ...cc.metadata, ...metadata.python
        name = ".".join(parts[:i])
        sys.modules.setdefault(name, types.ModuleType(name))
    stand_in = types.ModuleType(MODULE, minimum_parser_version.__doc__)
    stand_in.GetMinimumMetadataParserVersion = minimum_parser_version
    sys.modules[MODULE] = stand_in
