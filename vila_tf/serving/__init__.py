"""TF Serving tooling: request builders and response parsers (REST and gRPC, `requests`), and the
model-server check (`check`, `python -m vila_tf.serving check SAVEDMODEL_DIR`), and the warmup
requests an export carries (`warmup`). The runtime core never imports this sub-package.
"""
from vila_tf.serving.check import SessionModel, check, check_tensorflow_version, read_warmup, unregistered_ops
from vila_tf.serving.requests import (grpc_request, parse_grpc_response, parse_rest_response, request_to_inputs,
                                      rest_body_to_inputs, rest_request, rest_response)

__all__ = ["SessionModel", "check", "check_tensorflow_version", "read_warmup", "unregistered_ops", "grpc_request",
           "parse_grpc_response", "parse_rest_response", "request_to_inputs", "rest_body_to_inputs", "rest_request",
           "rest_response"]
