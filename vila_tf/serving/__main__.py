"""`python -m vila_tf.serving check|request ...`: the model-server check and REST request bodies."""
from __future__ import annotations

import argparse
import json
import sys

from vila_tf.core import metadata as export_metadata
from vila_tf.savedmodel import tf_compat
from vila_tf.serving.check import MissingServingApiError, _child, check
from vila_tf.serving.requests import rest_request
from vila_tf.core.signatures import SIGNATURE_INPUTS


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        print(json.dumps(_child(argv[1])))
        return 0
    p = argparse.ArgumentParser(prog="python -m vila_tf.serving")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="load an export the way tensorflow_model_server does and run it")
    c.add_argument("path")
    c.add_argument("--server-version", metavar="X.Y",
                   help="also refuse the export unless TF Serving X.Y runs it (its recorded minimum release)")
    r = sub.add_parser("request", help="print the REST JSON body for a signature and inputs")
    r.add_argument("signature", choices=sorted(SIGNATURE_INPUTS))
    r.add_argument("inputs", nargs="+", help="image files (or texts, for text_embedding)")
    r.add_argument("--columnar", action="store_true", help='{"inputs": ...} instead of {"instances": ...}')
    args = p.parse_args(argv)
    if args.cmd == "request":
        print(json.dumps(rest_request(args.signature, args.inputs, args.columnar)))
        return 0
    try:
        report = check(args.path, args.server_version)
    except tf_compat.IncompatibleTensorFlowError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    except (MissingServingApiError, export_metadata.MetadataError) as e:
        print(f"python -m vila_tf.serving: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    print("OK: serves under tensorflow_model_server with --xla_cpu_compilation_enabled=true"
          if report["ok"] else "FAILED", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
