"""`vila-tf info MODEL`: what the model is (kind, config, signatures, source), from its backend's
own `describe()`."""
from __future__ import annotations

from vila_tf.cli import options
from vila_tf.core.exits import EXIT_OK

HELP = "what the model is: kind, config, signatures, source"


def add_parser(sub) -> None:
    c = sub.add_parser("info", help=HELP, description=HELP)
    options.add_model(c)
    c.add_argument("--verbose", action="store_true", help="also show TensorFlow's own log lines")
    c.set_defaults(run=run)


def run(args) -> int:
    model = options.load(args)
    try:
        print("\n".join(model.describe()))
    finally:
        model.close()
    return EXIT_OK
