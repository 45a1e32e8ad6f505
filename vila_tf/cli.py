"""`vila-tf`: score, zero-shot, caption and embed photos with an exported VILA model.

  vila-tf score MODEL photos/ extra.jpg 'shots/*.png' [--format table|csv|jsonl] [--output FILE]
  vila-tf score MODEL photos/ --contact-sheet sheet.png [--with-captions]
  vila-tf caption MODEL photos/ ;  vila-tf zero-shot MODEL ... ;  vila-tf embed MODEL ... --output emb.jsonl
  vila-tf info MODEL

Exit codes: 0 every input processed, 1 some inputs failed (reported on stderr and in the output
with their reason), 2 usage or model error.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import time
import warnings
from typing import Optional

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR = 0, 1, 2
COMMANDS = {
    "score": "aesthetic score per image (VILA-R; zero-shot score for a pretrain model)",
    "zero-shot": "zero-shot quality score from the release's six good/bad prompt pairs",
    "caption": "an aesthetic comment per image (greedy decoding)",
    "embed": "l2-normalized image embeddings",
    "info": "what the model is: kind, config, signatures, source",
}


class Progress:
    """A one-line progress bar on stderr (only on a terminal unless forced)."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.total, self.label, self.enabled, self.start = total, label, enabled, time.time()

    def update(self, done: int) -> None:
        if not self.enabled or not self.total:
            return
        frac = done / self.total
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        rate = done / max(time.time() - self.start, 1e-9)
        sys.stderr.write(f"\r{self.label} [{bar}] {done}/{self.total} ({rate:.1f} img/s)")
        if done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vila-tf", description="Run an exported VILA model on photos.",
        epilog="Batch jobs on Apache Beam: vila-tf beam {score,zero-shot,caption,embed} MODEL --input PATTERN "
               "--output PREFIX [pipeline options] (see vila-tf beam --help).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        c = sub.add_parser(name, help=help_text, description=help_text)
        c.add_argument("model", help="exported SavedModel folder, or a TF Serving base folder (newest version)")
        if name == "info":
            continue
        c.add_argument("inputs", nargs="+", help="image files, folders (walked recursively) or glob patterns")
        c.add_argument("--format", choices=["table", "csv", "jsonl"], default=None,
                       help="output format (default: table on a terminal, else csv; embed: jsonl)")
        c.add_argument("--output", "-o", help="write results here instead of stdout")
        c.add_argument("--batch-size", type=int, default=32, help="images per model call (at most 32)")
        c.add_argument("--device", help="e.g. GPU:0 (default: CPU)")
        c.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
        if name == "score":
            c.add_argument("--contact-sheet", metavar="PNG", help="write thumbnails sorted by score to this PNG")
            c.add_argument("--with-captions", action="store_true", help="also caption each image")
    return p


def _rows(command: str, sources, values, captions, errors) -> list[dict]:
    failed = {e.index: e.reason for e in errors}
    rows = []
    for i, src in enumerate(sources):
        row = {"input": src}
        if i in failed:
            row["error"] = failed[i]
        elif command == "embed":
            row["embedding"] = [round(float(x), 7) for x in values[i]]
        elif command == "caption":
            row["caption"] = values[i]
        else:
            row["score"] = round(float(values[i]), 6)
            if captions is not None:
                row["caption"] = captions[i]
        rows.append(row)
    return rows


def _write(rows: list[dict], fmt: str, out) -> None:
    if fmt == "jsonl":
        for r in rows:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
        return
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if fmt == "csv":
        w = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()})
        return
    cells = [[str(r.get(c, "")) if not isinstance(r.get(c), list) else f"[{len(r[c])} floats]" for c in columns]
             for r in rows]
    widths = [min(60, max([len(c)] + [len(row[k]) for row in cells])) for k, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(v[:w].ljust(w) for v, w in zip(row, widths)).rstrip() + "\n")


def _info(model) -> int:
    meta = model.metadata
    print(f"model: {model.path}")
    print(f"kind: {meta.get('model_kind', model.model_type)}" + ("  (DEMO weights: outputs mean nothing)"
                                                               if model.is_demo else ""))
    for k in ("source_checkpoint", "source_sha256", "dtype", "platforms", "calling_convention_version"):
        if k in meta:
            print(f"{k}: {meta[k]}")
    if "tensorflow_support" in meta:
        print(f"runs on TensorFlow: {meta['tensorflow_support']['minimum']} and newer")
    cfg = meta.get("config", {})
    if cfg:
        print("config: " + ", ".join(f"{k}={v}" for k, v in sorted(cfg.items())))
    print("signatures:")
    for name, fn in sorted(model.signatures.items()):
        ins = ", ".join(f"{k} {v.dtype.name}{v.shape}" for k, v in fn.structured_input_signature[1].items())
        outs = ", ".join(f"{k} {v.dtype.name}{v.shape}" for k, v in fn.structured_outputs.items())
        print(f"  {name}({ins}) -> {outs}")
    return EXIT_OK


def _run(args) -> int:
    import vila_tf
    from vila_tf.atomic import atomic_file
    from vila_tf import inputs as inputs_lib
    try:
        model = vila_tf.load(args.model, device=getattr(args, "device", None))
    except (FileNotFoundError, OSError, ValueError) as e:
        print(f"vila-tf: cannot load model: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.command == "info":
        return _info(model)
    if not 1 <= args.batch_size:
        print("vila-tf: --batch-size must be >= 1", file=sys.stderr)
        return EXIT_ERROR
    items = inputs_lib.expand(args.inputs)
    progress = Progress(len(items), args.command, args.progress or sys.stderr.isatty())
    method = {"score": model.score, "zero-shot": model.zero_shot, "caption": model.caption,
              "embed": model.image_embedding}[args.command]
    values, errors, captions = [], [], [] if getattr(args, "with_captions", False) else None
    chunk = max(1, min(args.batch_size, 32)) * 4  # several batches per progress step
    progress.update(0)
    for start in range(0, len(items), chunk):
        part = items[start:start + chunk]
        v, errs = method(part, batch_size=args.batch_size, return_errors=True)
        values.extend(list(v))
        errors.extend(e._replace(index=e.index + start, source=part[e.index].source) for e in errs)
        if captions is not None:
            captions.extend(model.caption(part, batch_size=args.batch_size))
        progress.update(start + len(part))
    fmt = args.format or ("jsonl" if args.command == "embed" else ("table" if sys.stdout.isatty() and not args.output
                                                                   else "csv"))
    rows = _rows(args.command, [it.source for it in items], values, captions, errors)
    if args.output:
        # Atomic: an interrupted run leaves the previous file (or none), never a truncated one.
        with atomic_file(args.output, "w", encoding="utf-8", newline="") as f:
            _write(rows, fmt, f)
    else:
        _write(rows, fmt, sys.stdout)
    for e in errors:
        print(f"vila-tf: {e.source}: {e.reason}", file=sys.stderr)
    if getattr(args, "contact_sheet", None):
        from vila_tf import contact_sheet
        ok = [i for i, it in enumerate(items) if it.data is not None and math.isfinite(values[i])]
        sheet = contact_sheet.render([items[i].data for i in ok], [values[i] for i in ok],
                                     [captions[i] for i in ok] if captions is not None else None,
                                     [os.path.basename(items[i].source) for i in ok])
        with atomic_file(args.contact_sheet, "wb") as f:
            sheet.save(f, format="PNG")
        print(f"vila-tf: contact sheet of {len(ok)} images -> {args.contact_sheet}", file=sys.stderr)
    if errors:
        print(f"vila-tf: {len(errors)} of {len(items)} inputs failed", file=sys.stderr)
    return EXIT_SOME_FAILED if errors else EXIT_OK


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["beam"]:  # `vila-tf beam ...`: own parser, since unknown flags belong to Beam
        try:
            from vila_tf import beam
        except ImportError as e:
            print(f"vila-tf: {e}", file=sys.stderr)
            return EXIT_ERROR
        return beam.main(argv[1:])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = _parser().parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)  # per-image failures are reported below instead
    from vila_tf.model import DemoModelWarning
    warnings.simplefilter("always", DemoModelWarning)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"vila-tf: WARNING: {msg}\n"
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("vila-tf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
