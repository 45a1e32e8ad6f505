"""`python -m export stablehlo SAVEDMODEL --out BUNDLE`: the SavedModel's StableHLO, runnable by JAX alone.

For every signature's lowered function this reads the `XlaCallModule` op back from the SavedModel's
graph (the module bytes exactly as stored: nothing is re-lowered) and wraps it as a serialized
`jax.export.Exported`, so `benchmarks/accelerator.py` can run it with jax and numpy only, on
cpu, cuda or tpu. The bundle also holds sample inputs with the outputs that the SavedModel's own
op gives for them on CPU, and the weights the functions read when they fit in `--max-weight-bytes`
(else only their shapes: the runner then times random weights). Layout (docs/accelerators.md):

  BUNDLE/manifest.json         functions, their inputs (weights by name, data by kind), weights' shapes
  BUNDLE/<function>.jax_export serialized jax.export module
  BUNDLE/<function>.npz        sample inputs `input_<i>` and SavedModel outputs `output_<i>`
  BUNDLE/weights.npz           the weights (bfloat16 stored as uint16 bit patterns), when they fit
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os

import numpy as np

from vila_tf.core.atomic import atomic_dir
from vila_tf.core import metadata as export_metadata
from vila_tf.core.signatures import ALL_SIGNATURES, PIXELS, SIGNATURES
from .. import PROG

FORMAT = "vila-tf-stablehlo/1"
DEFAULT_MAX_WEIGHT_BYTES = 64 << 20  # what a remote accelerator run may carry in files
SAMPLE_BATCH = 2
# Output checks the runner applies (docs/accelerators.md): float outputs' max |difference| and the
# share of caption ids that must agree, per compute dtype.
TOLERANCES = {
    "float32": {"float_abs": 1e-4, "int_agreement": 1.0},
    "bfloat16": {"float_abs": 2e-2, "int_agreement": 0.9},
}


class BundleError(ValueError):
    pass


def _function_name(signature: str) -> str:
    """The bundle's name for the lowered head a signature runs (the signature table's `head`:
    score, image embedding and zero-shot share one, "image")."""
    return SIGNATURES[signature].head or signature


def _main_types(module_bytes: bytes) -> tuple[list, list]:
    """(inputs, outputs) of the module's `main` as (shape with None for dynamic dims, dtype name);
    the multi-platform `_platform_index` argument is left out, as jax.export's avals leave it."""
    from jax._src.interpreters import mlir
    from jax._src.lib import _jax
    from jax._src.lib.mlir import ir

    def describe(t):
        rt = ir.RankedTensorType(t)
        shape = [None if ir.ShapedType.is_dynamic_size(d) else int(d) for d in rt.shape]
        return shape, _ELEMENT_TYPES[str(rt.element_type)]

    with mlir.make_ir_context():
        module = _jax.mlir.deserialize_portable_artifact(module_bytes)
        for op in module.body.operations:
            if "sym_name" in op.attributes and ir.StringAttr(op.attributes["sym_name"]).value == "main":
                ft = ir.FunctionType(ir.TypeAttr(op.attributes["function_type"]).value)
                arg_attrs = [str(a) for a in op.attributes["arg_attrs"]] if "arg_attrs" in op.attributes \
                    else [""] * len(ft.inputs)
                ins = [describe(t) for t, a in zip(ft.inputs, arg_attrs) if "_platform_index" not in a]
                return ins, [describe(t) for t in ft.results]
    raise BundleError("the lowered module has no `main` function")


_ELEMENT_TYPES = {"f32": "float32", "bf16": "bfloat16", "i32": "int32", "i64": "int64", "i1": "bool",
                  "f16": "float16"}


def _exported(name: str, node_attrs: dict, ins: list, outs: list):
    """A jax.export.Exported around the stored module bytes, with the module's own signature.

    Dynamic dimensions become symbols: the leading one is the batch `b` (shared by inputs and
    outputs); any other is its own symbol (the text length)."""
    import jax
    from jax import export as jax_export

    scope = jax_export.SymbolicScope()
    symbols = iter(f"d{i}" for i in range(1000))

    def aval(shape, dtype):
        spec = ", ".join("b" if d is None and i == 0 else next(symbols) if d is None else str(d)
                         for i, d in enumerate(shape))
        dims = jax_export.symbolic_shape(f"({spec})", scope=scope) if shape else ()
        return jax.core.ShapedArray(dims, np.dtype(jax.numpy.dtype(dtype)))

    in_avals = tuple(aval(*t) for t in ins)
    out_avals = tuple(aval(*t) for t in outs)
    n_in, n_out = len(in_avals), len(out_avals)
    return jax_export.Exported(
        fun_name=name,
        in_tree=jax.tree_util.tree_structure((tuple(range(n_in)), {})),
        in_avals=in_avals,
        out_tree=jax.tree_util.tree_structure(tuple(range(n_out))),
        out_avals=out_avals,
        _has_named_shardings=True, _in_named_shardings=(None,) * n_in, _out_named_shardings=(None,) * n_out,
        in_shardings_hlo=(None,) * n_in, out_shardings_hlo=(None,) * n_out,
        nr_devices=1,
        platforms=tuple(p.lower() for p in node_attrs["platforms"]),
        ordered_effects=(), unordered_effects=(),
        disabled_safety_checks=(),
        mlir_module_serialized=node_attrs["module"],
        calling_convention_version=node_attrs["version"],
        module_kept_var_idx=tuple(range(n_in)),
        uses_global_constants=True,
        _get_vjp=None,
    )


def _xla_call_module(signature_fn):
    """(the XlaCallModule NodeDef, the function it is in) for a signature's graph."""
    found = []
    library = signature_fn.graph.as_graph_def().library.function
    for f in library:
        found += [(n, f) for n in f.node_def if n.op == "XlaCallModule"]
    if len(found) > 1:
        raise BundleError(f"{signature_fn.name}: {len(found)} lowered modules, expected one")
    return found[0] if found else (None, None)


_CALLS = ("StatefulPartitionedCall", "PartitionedCall")


def _op_inputs(node, function_def, signature_fn, variables_by_handle) -> list:
    """For each input of the XlaCallModule node: the variable it reads, or None for a data input.
    An argument is followed up the calls, from function to function (the pixel functions call one
    shared image function), to the signature's own graph, where a variable is a captured input."""
    graph = signature_fn.graph
    # Who calls each function (the first call found): an op of the signature's graph, or a node of
    # another function of its library.
    top_calls, inner_calls = {}, {}
    for op in graph.get_operations():
        if op.type in _CALLS:
            top_calls.setdefault(op.get_attr("f").name, op)
    for caller in graph.as_graph_def().library.function:
        for n in caller.node_def:
            if n.op in _CALLS:
                inner_calls.setdefault(n.attr["f"].func.name, (caller, n))
    internal = {id(t): j for j, t in enumerate(graph.internal_captures)}
    nodes_of = {}

    def arg_of(fdef, ref: str):
        """The index of `fdef`'s input argument that `ref` (a node input inside it) comes from,
        through the Identity / ReadVariableOp nodes jax2tf puts in between; None if another op
        makes it."""
        nodes = nodes_of.setdefault(fdef.signature.name, {n.name: n for n in fdef.node_def})
        name = ref.split(":")[0]
        while name in nodes and nodes[name].op in ("Identity", "ReadVariableOp"):
            name = nodes[name].input[0].split(":")[0]
        args = [a.name for a in fdef.signature.input_arg]
        return args.index(name) if name in args else None

    def variable_of_arg(function_name: str, index: int):
        if function_name in top_calls:
            j = internal.get(id(top_calls[function_name].inputs[index]))
            return None if j is None else variables_by_handle.get(id(signature_fn.captured_inputs[j]))
        if function_name in inner_calls:
            caller, call = inner_calls[function_name]
            k = arg_of(caller, [i for i in call.input if not i.startswith("^")][index])
            return None if k is None else variable_of_arg(caller.signature.name, k)
        return None

    result = []
    for ref in node.input:
        if ref.startswith("^"):
            continue  # a control dependency, not an argument
        k = arg_of(function_def, ref)
        result.append(None if k is None else variable_of_arg(function_def.signature.name, k))
    return result


def _sample(kind: str, shape: list, dtype: str, vocab: int, rng) -> np.ndarray:
    if kind == "image":
        return rng.uniform(0, 1, shape).astype(dtype)
    if kind == "ids":
        return rng.integers(3, vocab, shape).astype(dtype)
    # paddings: row i keeps its first (i+1)*T/(B+1) tokens
    b, t = shape
    lengths = [(i + 1) * t // (b + 1) for i in range(b)]
    return (np.arange(t)[None, :] >= np.asarray(lengths)[:, None]).astype(dtype)


def _data_kind(shape: list, dtype: str) -> str:
    if len(shape) == 4:
        return "image"
    if len(shape) == 2 and dtype.startswith("int"):
        return "ids"
    if len(shape) == 2:
        return "paddings"
    raise BundleError(f"unexpected data input {shape} {dtype}")


def _as_numpy(tensor) -> tuple[np.ndarray, str]:
    """(array storable in .npz, dtype name): bfloat16 as its uint16 bit pattern."""
    a = tensor.numpy()
    if a.dtype.name == "bfloat16":
        return a.view(np.uint16), "bfloat16"
    return a, a.dtype.name


def write_bundle(savedmodel_dir: str, out_dir: str, max_weight_bytes: int = DEFAULT_MAX_WEIGHT_BYTES,
                 log=print) -> str:
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the SentencePiece ops of the graph)
    from tensorflow.compiler.tf2xla.ops import gen_xla_ops

    try:
        meta = export_metadata.read(savedmodel_dir)
    except export_metadata.MetadataError as e:
        raise BundleError(str(e)) from None
    model = tf.saved_model.load(savedmodel_dir)
    variables_by_handle = {id(v.handle): v for v in model.variables}
    text_length, vocab, compute_dtype = meta.text_length, int(meta.config["vocab_size"]), meta.compute_dtype
    rng = np.random.default_rng(0)

    functions, used = {}, {}
    # The pixel signatures first: the image-bytes ones call the same head after preprocessing.
    for signature in sorted(ALL_SIGNATURES, key=lambda s: SIGNATURES[s].kind != PIXELS):
        name = _function_name(signature)
        if name in functions:
            functions[name]["signatures"].append(signature)
            continue
        fn = model.signatures[signature]
        node, fdef = _xla_call_module(fn)
        if node is None:
            continue  # preprocess: no lowered function
        attrs = {"module": node.attr["module"].s, "version": node.attr["version"].i,
                 "platforms": [p.decode() for p in node.attr["platforms"].list.s]}
        sources = _op_inputs(node, fdef, fn, variables_by_handle)
        ins, outs = _main_types(attrs["module"])
        if len(ins) != len(sources):
            raise BundleError(f"{signature}: module takes {len(ins)} arguments, the op feeds {len(sources)}")
        inputs, args = [], []
        for (shape, dtype), var in zip(ins, sources):
            if var is not None:
                wname = var.name.split(":")[0]
                used[wname] = var
                inputs.append({"weight": wname})
                args.append(var.read_value())
            else:
                kind = _data_kind(shape, dtype)
                concrete = [SAMPLE_BATCH if i == 0 else d if d is not None else text_length
                            for i, d in enumerate(shape)]
                inputs.append({"data": kind, "shape": shape, "dtype": dtype})
                args.append(tf.constant(_sample(kind, concrete, dtype, vocab, rng)))
        # The SavedModel's own op on CPU: the same node, attributes and inputs as in its graph.
        node_attrs = {k: node.attr[k] for k in node.attr}
        out_tensors = gen_xla_ops.xla_call_module(
            args=args, version=attrs["version"], module=attrs["module"],
            Sout=[tf.TensorShape(None if s.unknown_rank else [d.size if d.size >= 0 else None for d in s.dim])
                  for s in node_attrs["Sout"].list.shape],
            Tout=[tf.dtypes.as_dtype(t) for t in node_attrs["Tout"].list.type],
            dim_args_spec=list(node_attrs["dim_args_spec"].list.s),
            platforms=attrs["platforms"],
            function_list=[],
            has_token_input_output=node_attrs["has_token_input_output"].b,
            disabled_checks=list(node_attrs["disabled_checks"].list.s),
            use_shardy_partitioner=node_attrs["use_shardy_partitioner"].b if "use_shardy_partitioner" in node_attrs
            else False)
        sample = {}
        for i, (spec, a) in enumerate(zip(inputs, args)):
            if "data" in spec:
                sample[f"input_{i}"] = a.numpy()
        for i, t in enumerate(out_tensors):
            sample[f"output_{i}"], _ = _as_numpy(t)
        exported = _exported(name, attrs, ins, outs)
        functions[name] = {"module": f"{name}.jax_export", "samples": f"{name}.npz", "signatures": [signature],
                           "inputs": inputs, "outputs": [{"shape": s, "dtype": d} for s, d in outs],
                           "platforms": [p.lower() for p in attrs["platforms"]],
                           "calling_convention_version": attrs["version"],
                           "module_sha256": hashlib.sha256(attrs["module"]).hexdigest(),
                           "_serialized": exported.serialize(), "_sample": sample}
        log(f"{name}: {len(ins)} arguments ({sum('weight' in s for s in inputs)} weights), "
            f"{len(outs)} outputs, {len(attrs['module']) / 1e6:.2f} MB module")

    weights = {n: _as_numpy(v.read_value()) for n, v in used.items()}
    weight_bytes = int(sum(a.nbytes for a, _ in weights.values()))
    include = weight_bytes <= max_weight_bytes
    manifest = {
        "format": FORMAT,
        "savedmodel": os.path.abspath(savedmodel_dir),
        "model_type": meta.model_type, "dtype": meta.dtype, "compute_dtype": compute_dtype,
        "demo_weights": meta.demo_weights,
        "config": meta.config,
        "tolerance": TOLERANCES[compute_dtype],
        "weights": {"file": "weights.npz" if include else None, "bytes": weight_bytes,
                    "max_weight_bytes": max_weight_bytes,
                    "arrays": {n: {"shape": list(a.shape), "dtype": d} for n, (a, d) in weights.items()}},
        "functions": {n: {k: v for k, v in f.items() if not k.startswith("_")} for n, f in functions.items()},
    }
    with atomic_dir(os.path.abspath(out_dir)) as tmp:
        for name, f in functions.items():
            with open(os.path.join(tmp, f["module"]), "wb") as fh:
                fh.write(f["_serialized"])
            np.savez(os.path.join(tmp, f["samples"]), **f["_sample"])
        if include:
            np.savez(os.path.join(tmp, "weights.npz"), **{n: a for n, (a, _) in weights.items()})
        with open(os.path.join(tmp, "manifest.json"), "w") as fh:
            json.dump(manifest, fh, indent=1)
    log(f"weights: {weight_bytes / 1e6:.1f} MB " + ("included" if include else
        f"over --max-weight-bytes {max_weight_bytes}: shapes only (the runner uses random weights)"))
    return out_dir


def cmd_stablehlo(argv) -> int:
    p = argparse.ArgumentParser(prog=f"{PROG} stablehlo",
                                description="Write a SavedModel's lowered StableHLO functions as a bundle that "
                                            "benchmarks/accelerator.py runs with jax alone (docs/accelerators.md).")
    p.add_argument("savedmodel", help="a vila-tf SavedModel folder")
    p.add_argument("--out", required=True, help="bundle folder to write (atomically)")
    p.add_argument("--max-weight-bytes", type=int, default=DEFAULT_MAX_WEIGHT_BYTES,
                   help="include the weights when they take at most this many bytes "
                        f"(default {DEFAULT_MAX_WEIGHT_BYTES >> 20} MiB); else only their shapes")
    args = p.parse_args(argv)
    write_bundle(args.savedmodel, args.out, args.max_weight_bytes)
    print(f"wrote {os.path.abspath(args.out)}")
    return 0
