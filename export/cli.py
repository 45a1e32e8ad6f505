"""`python -m export` (one model) and `python -m export all` (what `make export` runs)."""
from __future__ import annotations

import argparse
import os
import sys
import time

# TensorFlow's oneDNN build serves CPU tensors from a BFC allocator that grows in ever larger
# regions and never returns them: building 1.2 GB of variables left ~0.45 GB more resident than the
# variables themselves. The export runs no heavy TF kernels (JAX computes; TF tokenizes and saves),
# so it uses the plain allocator. Only when TensorFlow is not loaded yet (it reads this at start-up).
if "tensorflow" not in sys.modules:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from . import PROG, host_memory  # noqa: E402
from .checkpoints import paxml as checkpoint, release  # noqa: E402
from .model.config import VilaConfig  # noqa: E402
from vila_tf.core.digest import file_sha256  # noqa: E402

DEMO_NAME = "vila_demo"
DEMO_SEED = 20230618


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _progress(label: str):
    state = {"last": -1}

    def report(done: int, total: int) -> None:
        pct = done * 100 // max(total, 1)
        if pct != state["last"] and (pct % 10 == 0 or done == total):
            state["last"] = pct
            _log(f"{label}: {done}/{total} arrays ({pct}%)")
    return report


def export_checkpoint(ckpt: str, spm_path: str, out: str, dtype: str = "float32", step=None,
                      overrides: dict | None = None, compute_dtype: str = "float32",
                      target_tensorflow: str | None = None) -> str:
    from .savedmodel import writer as savedmodel
    if not os.path.isfile(spm_path):
        raise FileNotFoundError(f"{spm_path}: SentencePiece model not found (--spm)")
    host_memory.map_large_blocks()
    _log(f"reading {ckpt}")
    source = checkpoint.open_params(ckpt, step, **(overrides or {}))
    cfg = source.config
    sha = source.sha256 or (file_sha256(source.path) if os.path.isfile(source.path) else None)
    _log(f"{cfg.model_type}: {cfg.num_encoder_layers} encoder layers, "
         f"{cfg.num_unimodal_layers}+{cfg.num_crossmodal_layers} decoder layers, "
         f"dims {cfg.model_dims}, vocab {cfg.vocab_size}")
    opts = savedmodel.ExportOptions(dtype=dtype, compute_dtype=compute_dtype, source=os.path.abspath(source.path),
                                    source_sha256=sha, source_step=source.step, target_tensorflow=target_tensorflow)
    # The arrays are read from the file as the weights are written (lean export).
    return savedmodel.write_savedmodel(source, cfg, spm_path, out, opts, log=_log)


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
    _log("DEMO export: random weights of the released architecture; its scores mean nothing")
    spm_dir = os.path.join(os.path.dirname(os.path.abspath(out)), ".demo_spm")
    sentences = [line for root in _project_text_roots() for line in spm.repo_sentences(root)]
    spm_path = spm.train(sentences, os.path.join(spm_dir, "spm.model"), cfg.vocab_size)
    _log(f"trained a demo SentencePiece model on the project's text: {spm_path}")
    _log(f"{cfg.model_type} parameters: seeded random (seed {DEMO_SEED}), drawn as they are written")
    opts = savedmodel.ExportOptions(dtype=dtype, compute_dtype=compute_dtype, demo=True,
                                    source=f"demo: random weights, seed {DEMO_SEED}", target_tensorflow=target_tensorflow)
    # Each array is drawn as the weights are written (lean export).
    return savedmodel.write_savedmodel(demo.DemoParams(cfg, DEMO_SEED), cfg, spm_path, out, opts, log=_log)


def _add_dtype_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="weight storage type; bfloat16 halves the size")
    p.add_argument("--compute-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="matmul/convolution dtype (float32 accumulation; norms, softmax, decode logits and "
                        "scores stay float32): bfloat16 for GPU/TPU serving, see docs/accelerators.md")


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-tensorflow", metavar="X.Y", default=None,
                   help="lower for TensorFlow / TF Serving X.Y and newer (default: this TensorFlow); "
                        "docs/compatibility.md lists the reachable releases and what old targets lose")


def _check_target(p: argparse.ArgumentParser, release: str | None) -> None:
    if release:
        from .savedmodel import tf_targets
        try:
            tf_targets.target(release)
        except ValueError as e:
            p.error(str(e))


def cmd_export(argv, add_overrides, get_overrides) -> int:
    p = argparse.ArgumentParser(prog=PROG,
                                description="Export a VILA checkpoint as a TensorFlow SavedModel.")
    p.add_argument("--checkpoint", required=True,
                   help="paxml checkpoint folder (e.g. vila_rank_tuned) or a converted folder")
    p.add_argument("--spm", required=True, help="SentencePiece model (spm_model/spm.model)")
    p.add_argument("--out", required=True, help="SavedModel folder to write (atomically)")
    _add_dtype_args(p)
    _add_target(p)
    add_overrides(p)
    args = p.parse_args(argv)
    _check_target(p, args.target_tensorflow)
    out = export_checkpoint(args.checkpoint, args.spm, args.out, args.dtype, args.step, get_overrides(args),
                            args.compute_dtype, args.target_tensorflow)
    _log(f"wrote {out}")
    return 0


def cmd_all(argv) -> int:
    p = argparse.ArgumentParser(prog=f"{PROG} all",
                                description="Export every released checkpoint under --vila-dir "
                                            "(or the full-size demo model) to OUT/<name>/<version>/.")
    p.add_argument("--vila-dir", default="",
                   help="copy of gs://gresearch/vila: checkpoints/{vila_rank_tuned,vila_pretrain,laion_pretrain}/ "
                        "and spm_model/spm.model (the checkpoints/ folder itself, or a flat copy, also work)")
    p.add_argument("--out", default="exported")
    p.add_argument("--version", type=int, default=1)
    _add_dtype_args(p)
    _add_target(p)
    args = p.parse_args(argv)
    _check_target(p, args.target_tensorflow)
    t0 = time.time()
    written = []
    if args.vila_dir:
        found = release.find(args.vila_dir)
        _log(f"tokenizer: {found.spm_path}")
        if found.missing:
            _log(f"not in this copy (skipped): {', '.join(found.missing)}")
        for name, folder in found.models:
            out = os.path.join(args.out, name, str(args.version))
            try:
                written.append(export_checkpoint(folder, found.spm_path, out, args.dtype,
                                                 compute_dtype=args.compute_dtype,
                                                 target_tensorflow=args.target_tensorflow))
            except BaseException:
                # The failed model left nothing (exports are atomic); say which ones are complete.
                done = ", ".join(written) if written else "none"
                print(f"exporting {folder} failed; complete exports: {done}", file=sys.stderr)
                if written:
                    _write_serving_layout(args.out)
                raise
            _log(f"wrote {out}")
    else:
        out = os.path.join(args.out, DEMO_NAME, str(args.version))
        written.append(export_demo(out, args.dtype, compute_dtype=args.compute_dtype,
                                   target_tensorflow=args.target_tensorflow))
        _log(f"wrote {out} (DEMO weights: set VILA_DIR=... to export the released checkpoints)")
    _write_serving_layout(args.out)
    for w in written:
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(w) for f in fs)
        print(f"{w}\t{size / 1e9:.2f} GB")
    print(f"done in {time.time() - t0:.0f} s")
    return 0


def _write_serving_layout(out_root: str) -> None:
    from .publish import serving_layout
    serving_layout.write_models_config(out_root)
    serving_layout.write_batching_parameters(out_root)
