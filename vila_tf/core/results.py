"""What the runtime hands back, whatever runs the model: one `Result` per input from `stream`, the
`ImageError`s of the collectors, and the warning a demo export raises. No TensorFlow here, so every
backend and the command line share them."""
from __future__ import annotations

from typing import Any, NamedTuple, Optional


class DemoModelWarning(UserWarning):
    """The model was exported with random demo weights: its outputs mean nothing."""


class ImageError(NamedTuple):
    index: int  # position in the (expanded) inputs
    source: str  # path, or <bytes i> / <array i> / <image i>
    reason: str


class Result(NamedTuple):
    """One input's result from `VilaModel.stream`."""
    index: int  # position in the (expanded) inputs
    source: str  # path, or <bytes i> / <array i> / <image i>
    value: Any  # float, str or float32 [D]; None when the input failed
    error: Optional[str]  # why it failed; None when it worked
