"""`block(names, why)`: from then on, `import NAME` (or any NAME.submodule) fails in this process for
each top-level package named, as where it is not installed. The processes that show what a part of
the project does not need use it: `without_jax/` and `without_tensorflow/` (their
sitecustomize.py, at start-up), `jaxless_outputs.py` (no Beam either) and the StableHLO runner's
test (no TensorFlow)."""
import sys


class _Blocked:
    def __init__(self, names, why: str):
        self.names, self.why = frozenset(names), why

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ImportError(f"{name} is blocked: {self.why}")


def block(names, why: str) -> None:
    sys.meta_path.insert(0, _Blocked(names, why))
