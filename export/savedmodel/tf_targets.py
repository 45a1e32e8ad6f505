"""Which TensorFlow releases an export can run on, and how to lower for an older one.

A jax2tf export is a TensorFlow graph whose model heads are `XlaCallModule` ops holding a StableHLO
portable artifact. Three things decide the oldest TensorFlow (and TF Serving) that runs it:

- the jax.export calling convention version written on each `XlaCallModule` op: a TensorFlow
  refuses a version above its own maximum ("XlaCallModuleOp with version 10 is not supported by
  this build. Must be <= 9");
- the StableHLO version the artifact is serialized for: a TensorFlow reads artifacts up to the
  StableHLO version its XLA was built with ("Cannot deserialize computation");
- the TensorFlow ops of the graph itself (a WebP decoder exists only in newer releases).

`TARGETS` holds, per release, the values measured in that release by `make compat`
(`benchmarks/compat.py`, which also prints them): `tfxla.call_module_maximum_supported_version()`,
`stablehlo.get_current_version()`, the newest of the probed StableHLO versions that it loads and
runs, and whether `tf.io.decode_webp` exists. A target export is serialized for the reported version
(the reader's own), never more. See docs/compatibility.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
from typing import Iterable, Optional

from vila_tf.savedmodel import tf_compat


@dataclasses.dataclass(frozen=True)
class TargetTF:
    release: str  # "2.16"
    calling_convention: int  # newest XlaCallModule calling convention version it runs
    stablehlo: str  # the StableHLO version its own StableHLO reports: what a target export is serialized for
    reads_stablehlo: str  # the newest version of the probed ones it loads and runs (>= stablehlo)
    decode_webp: bool  # has the DecodeWebP op (tf.io.decode_webp)


# Measured by `make compat` in each release's own virtual environment (docs/compatibility.md).
TARGETS = {t.release: t for t in (
    TargetTF("2.16", 9, "0.17.7", "1.1.1", False),
    TargetTF("2.17", 9, "1.1.1", "1.1.1", False),
    TargetTF("2.18", 9, "1.7.3", "1.7.3", False),
    TargetTF("2.19", 9, "1.9.1", "1.9.1", False),
    TargetTF("2.20", 10, "1.12.1", "1.15.0", True),
    TargetTF("2.21", 10, "1.13.7", "1.15.0", True),
)}

# Measured releases that run an export but compute other numbers (`make compat`): never a target
# nor a minimum; the runtime refuses them (the table lives with the runtime, which reads it).
KNOWN_BAD = tf_compat.KNOWN_BAD

# The newest calling convention TensorFlow 2.15 runs (measured): below the oldest jax writes.
CALLING_CONVENTION_2_15 = 8

# TensorFlow ops an export may hold that older releases lack: op name -> first release with it.
NEWER_OPS = {"DecodeWebP": "2.20"}


def release_of(version: str) -> str:
    """'2.21.0', '2.20.0rc1', '2.19' -> 'X.Y'."""
    m = re.match(r"^(\d+)\.(\d+)", str(version))
    if not m:
        raise ValueError(f"not a TensorFlow version: {version!r} (expected X.Y, e.g. 2.16)")
    return f"{int(m.group(1))}.{int(m.group(2))}"


def release_key(release: str) -> tuple:
    return tuple(int(p) for p in release_of(release).split("."))


def target(release: str) -> TargetTF:
    """The target for `--target-tensorflow X.Y`; names the reachable releases otherwise."""
    key = release_of(release)
    known = ", ".join(r for r in TARGETS if r not in KNOWN_BAD)
    if key in KNOWN_BAD:
        raise ValueError(f"--target-tensorflow {release}: {KNOWN_BAD[key]}, so vila-tf refuses to run there; "
                         f"target one of {known} (docs/compatibility.md)")
    if key not in TARGETS:
        oldest = min(TARGETS, key=release_key)
        if release_key(key) < release_key(oldest):
            from jax import export as jax_export
            raise ValueError(
                f"--target-tensorflow {release}: TensorFlow {key} cannot be reached: the XlaCallModule of 2.15 "
                f"runs calling conventions up to {CALLING_CONVENTION_2_15} and this jax writes "
                f"{jax_export.minimum_supported_calling_convention_version} and newer only; the oldest "
                f"reachable release is {oldest} (docs/compatibility.md); reachable: {known}")
        raise ValueError(f"--target-tensorflow {release}: not a measured release; reachable: {known}")
    return TARGETS[key]


def oldest_release_for(calling_convention: int, stablehlo: str, ops: Iterable[str] = ()) -> str:
    """The oldest measured release that runs an export with this calling convention, StableHLO
    version and graph ops."""
    ops = set(ops)
    ok = [t.release for t in TARGETS.values()
          if t.release not in KNOWN_BAD and t.calling_convention >= calling_convention and version_key(t.reads_stablehlo) >= version_key(stablehlo)
          and all(release_key(t.release) >= release_key(NEWER_OPS[op]) for op in ops & set(NEWER_OPS))]
    if not ok:
        raise ValueError(f"no measured TensorFlow release runs calling convention {calling_convention} with "
                         f"StableHLO {stablehlo}")
    return min(ok, key=release_key)


def version_key(version: str) -> tuple:
    return tuple(int(p) for p in version.split("."))


def check_ops(ops: Iterable[str], tgt: TargetTF) -> None:
    """Refuses graph ops that the target release lacks (e.g. a WebP decoder for a 2.16 target)."""
    newer = sorted(op for op in set(ops) if op in NEWER_OPS and release_key(NEWER_OPS[op]) > release_key(tgt.release))
    if newer:
        raise ValueError(f"the graph uses {', '.join(newer)}, which TensorFlow {tgt.release} lacks (added in "
                         f"{', '.join(NEWER_OPS[op] for op in newer)}): leave it out for --target-tensorflow "
                         f"{tgt.release}")


def jax_default_stablehlo() -> str:
    """The StableHLO version jax.export serializes for by default (about four weeks older than
    its own), which only the newest TensorFlow releases read."""
    from jax._src.lib.mlir.dialects import hlo
    return hlo.get_version_from_compatibility_requirement(hlo.StablehloCompatibilityRequirement.WEEK_4)


def older_stablehlo(a: str, b: str) -> str:
    return min(a, b, key=version_key)


def support(calling_convention: int, stablehlo: str, ops: Iterable[str], target_release: Optional[str],
            webp_in_graph: Optional[bool] = None) -> dict:
    """The metadata record of the TensorFlow releases an export runs on (vila_tf.savedmodel.tf_compat reads it).
    `webp_in_graph`: whether the graph decodes WebP (through DecodeImage, which reads WebP from 2.20
    on); by default, whether it holds the DecodeWebP op."""
    ops = set(ops)
    if target_release:
        check_ops(ops, target(target_release))
    minimum = oldest_release_for(calling_convention, stablehlo, ops)
    return {"minimum": minimum,
            # Releases from the minimum on that run the export but compute other numbers: vila_tf
            # and `serving check` refuse them (vila_tf.savedmodel.tf_compat).
            "known_bad": {r: why for r, why in KNOWN_BAD.items() if release_key(r) >= release_key(minimum)},
            "target_tensorflow": release_of(target_release) if target_release else None,
            "calling_convention_version": calling_convention, "stablehlo_version": stablehlo,
            "webp_in_graph": ("DecodeWebP" in ops) if webp_in_graph is None else bool(webp_in_graph)}


@contextlib.contextmanager
def stablehlo_target(version: str):
    """jax.export serializes StableHLO for a version some weeks old (newer than older TensorFlow
    releases read); within this context it serializes for `version` instead.

    jax exposes no option for this: its one serialization helper is replaced for the duration.
    """
    from jax._src.export import _export
    from jax._src.lib import _jax
    from jax._src import xla_bridge as xb
    original = getattr(_export, "_module_to_bytecode", None)
    if original is None:
        raise RuntimeError("this jax has no jax._src.export._export._module_to_bytecode: the StableHLO target "
                           "version cannot be chosen; --target-tensorflow needs the jax pinned in constraints.txt")

    def to_bytecode(module):
        return _jax.mlir.serialize_portable_artifact(module, version, xb.get_backend().serialize_with_sdy)

    _export._module_to_bytecode = to_bytecode
    try:
        yield
    finally:
        _export._module_to_bytecode = original
