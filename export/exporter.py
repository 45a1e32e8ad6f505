"""The toolkit's entry points as a library: export one checkpoint, the full-size demo model, or
every released checkpoint of a copy of the release (what `make export` runs). The command line
(export/cli.py) and the tests and benchmarks call these."""
from __future__ import annotations

import os
import sys

# TensorFlow's oneDNN build serves CPU tensors from a BFC allocator that grows in ever larger
# regions and never returns them: building 1.2 GB of variables left ~0.45 GB more resident than the
# variables themselves. The export runs no heavy TF kernels (JAX computes; TF tokenizes and saves),
# so it uses the plain allocator. Only when TensorFlow is not loaded yet (it reads this at start-up).
if "tensorflow" not in sys.modules:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from . import host_memory  # noqa: E402
from .checkpoints import paxml as checkpoint, release  # noqa: E402
from .log import log  # noqa: E402
from .model.config import VilaConfig  # noqa: E402
from vila_tf.core.digest import file_sha256  # noqa: E402

DEMO_NAME = "vila_demo"
DEMO_SEED = 20230618


def export_checkpoint(ckpt: str, spm_path: str, out: str, dtype: str = "float32", step=None,
                      overrides: dict | None = None, compute_dtype: str = "float32",
                      target_tensorflow: str | None = None) -> str:
    from .savedmodel import writer as savedmodel
    if not os.path.isfile(spm_path):
        raise FileNotFoundError(f"{spm_path}: SentencePiece model not found (--spm)")
    host_memory.map_large_blocks()
    log(f"reading {ckpt}")
    source = checkpoint.open_params(ckpt, step, **(overrides or {}))
    cfg = source.config
    sha = source.sha256 or (file_sha256(source.path) if os.path.isfile(source.path) else None)
    log(f"{cfg.model_type}: {cfg.num_encoder_layers} encoder layers, "
         f"{cfg.num_unimodal_layers}+{cfg.num_crossmodal_layers} decoder layers, "
         f"dims {cfg.model_dims}, vocab {cfg.vocab_size}")
    opts = savedmodel.ExportOptions(dtype=dtype, compute_dtype=compute_dtype, source=os.path.abspath(source.path),
                                    source_sha256=sha, source_step=source.step, target_tensorflow=target_tensorflow)
    # The arrays are read from the file as the weights are written (lean export).
    return savedmodel.write_savedmodel(source, cfg, spm_path, out, opts, log=log)


def _project_text_roots() -> list[str]:
    """The checkout (code and docs) when run from one; else the installed packages' own folders
    (never the whole site-packages)."""
    here = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.dirname(here)
    if os.path.isfile(os.path.join(checkout, "setup.cfg")):
        return [checkout]
    import vila_tf
    return [here, os.path.dirname(os.path.abspath(vila_tf.__file__))]


def export_demo(out: str, dtype: str = "float32", cfg: VilaConfig | None = None,
                compute_dtype: str = "float32", target_tensorflow: str | None = None) -> str:
    """The full released architecture with seeded random weights and a tokenizer trained on the
    project's own text: the whole pipeline at real size, with scores that mean nothing."""
    from .model import demo
    from .savedmodel import writer as savedmodel, spm
    cfg = cfg or VilaConfig()
    host_memory.map_large_blocks()
    log("DEMO export: random weights of the released architecture; its scores mean nothing")
    spm_dir = os.path.join(os.path.dirname(os.path.abspath(out)), ".demo_spm")
    sentences = [line for root in _project_text_roots() for line in spm.repo_sentences(root)]
    spm_path = spm.train(sentences, os.path.join(spm_dir, "spm.model"), cfg.vocab_size)
    log(f"trained a demo SentencePiece model on the project's text: {spm_path}")
    log(f"{cfg.model_type} parameters: seeded random (seed {DEMO_SEED}), drawn as they are written")
    opts = savedmodel.ExportOptions(dtype=dtype, compute_dtype=compute_dtype, demo=True,
                                    source=f"demo: random weights, seed {DEMO_SEED}", target_tensorflow=target_tensorflow)
    # Each array is drawn as the weights are written (lean export).
    return savedmodel.write_savedmodel(demo.DemoParams(cfg, DEMO_SEED), cfg, spm_path, out, opts, log=log)


def export_all(vila_dir: str, out_root: str, version: int = 1, dtype: str = "float32",
               compute_dtype: str = "float32", target_tensorflow: str | None = None) -> list[str]:
    """Every released checkpoint under `vila_dir` (or, without one, the demo model) to
    OUT/<name>/<version>/, plus TF Serving's models.config and batching parameters; the folders written."""
    written = []
    if vila_dir:
        found = release.find(vila_dir)
        log(f"tokenizer: {found.spm_path}")
        if found.missing:
            log(f"not in this copy (skipped): {', '.join(found.missing)}")
        for name, folder in found.models:
            out = os.path.join(out_root, name, str(version))
            try:
                written.append(export_checkpoint(folder, found.spm_path, out, dtype, compute_dtype=compute_dtype,
                                                 target_tensorflow=target_tensorflow))
            except BaseException:
                # The failed model left nothing (exports are atomic); say which ones are complete.
                done = ", ".join(written) if written else "none"
                print(f"exporting {folder} failed; complete exports: {done}", file=sys.stderr)
                if written:
                    write_serving_layout(out_root)
                raise
            log(f"wrote {out}")
    else:
        out = os.path.join(out_root, DEMO_NAME, str(version))
        written.append(export_demo(out, dtype, compute_dtype=compute_dtype, target_tensorflow=target_tensorflow))
        log(f"wrote {out} (DEMO weights: set VILA_DIR=... to export the released checkpoints)")
    write_serving_layout(out_root)
    return written


def write_serving_layout(out_root: str) -> None:
    from .publish import serving_layout
    serving_layout.write_models_config(out_root)
    serving_layout.write_batching_parameters(out_root)
