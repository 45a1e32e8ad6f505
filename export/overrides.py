"""The config overrides every command that reads a checkpoint accepts (`--model-type`,
`--decoding-max-len`, `--atten-logit-cap`, `--step`): declared once, read once."""
from __future__ import annotations

import argparse


def add(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("config overrides (default: read from the checkpoint's shapes)")
    g.add_argument("--model-type", choices=["vila_r", "vila_p"])
    g.add_argument("--decoding-max-len", type=int, help="caption length incl. BOS (release: 64)")
    g.add_argument("--atten-logit-cap", type=float, help="release: 50.0")
    g.add_argument("--step", type=int, help="checkpoint step (default: the latest)")


def read(args) -> dict:
    return {k: getattr(args, k) for k in ("model_type", "decoding_max_len", "atten_logit_cap")
            if getattr(args, k, None) is not None}
