"""A SavedModel's signatures and functions, loaded without rebuilding them in Python.

`tf.saved_model.load` turns every function of the export back into a Python graph (79 functions
and ~19k ops for a VILA model, including the save and restore functions a runtime never calls)
and every variable into a Python object with its own restore: ~3-4 s of a full-size model's
start-up. This loader hands the export's FunctionDefs to the TensorFlow runtime as they are, reads
the variables in a few RestoreV2 calls side by side into bare variable handles, and calls a
function the way a loaded ConcreteFunction does (an eager call of the function by name with its
captured inputs appended), so the numbers are those of the same functions on the same weights.

It takes the exports `vila-tf` writes: functions whose captured inputs are variables, constants,
assets and resources (the tokenizer). Anything else raises `NotLoadable`, and the caller loads the
export with `tf.saved_model.load` instead (so does a `tf.distribute` strategy scope, whose
variables this loader does not make).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import os
import threading
import weakref
from typing import Optional

import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import config_pb2, saved_model_pb2, trackable_object_graph_pb2
from tensorflow.python.eager import context, execute
from tensorflow.python.framework import op_def_registry, tensor_util
from tensorflow.python.ops import gen_io_ops, gen_resource_variable_ops
from tensorflow.python.saved_model import nested_structure_coder

from vila_tf.savedmodel import tf_import

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
READ_CALLS = 4  # RestoreV2 calls side by side (no more than the machine's cores)
_loads = itertools.count()


class NotLoadable(Exception):
    """The export holds something this loader does not make; `tf.saved_model.load` loads it."""


def _read_proto(path: str):
    pb = os.path.join(path, "saved_model.pb")
    if not os.path.isfile(pb):
        raise NotLoadable(f"no {pb}")
    sm = saved_model_pb2.SavedModel()
    try:
        with open(pb, "rb") as f:
            sm.ParseFromString(f.read())
    except (OSError, DecodeError) as e:
        raise NotLoadable(f"{pb}: {e}") from None
    if len(sm.meta_graphs) != 1 or not sm.meta_graphs[0].HasField("object_graph_def"):
        raise NotLoadable("not a TF2 SavedModel with one MetaGraph")
    return sm.meta_graphs[0]


def _rename(library, suffix: str) -> None:
    """Gives every function a name of its own in this process (two exports, or one loaded twice,
    hold functions of the same name) and every shared resource a name of its own (as
    tf.saved_model.load does), in place."""
    names = {f.signature.name for f in library.function}

    def fix_attr(attr):
        kind = attr.WhichOneof("value")
        if kind == "func" and attr.func.name in names:
            attr.func.name += suffix
        elif kind == "list":
            for fn in attr.list.func:
                if fn.name in names:
                    fn.name += suffix

    for fdef in library.function:
        fdef.signature.name += suffix
        for node in fdef.node_def:
            if node.op in names:
                node.op += suffix
            for attr in node.attr.values():
                fix_attr(attr)
            op_def = op_def_registry.get(node.op)
            if op_def is not None and any(a.name == "shared_name" for a in op_def.attr):
                shared = node.attr["shared_name"].s if "shared_name" in node.attr else b""
                if not shared:
                    default = next(a for a in op_def.attr if a.name == "shared_name").default_value.s
                    shared = default or node.name.encode()
                node.attr["shared_name"].s = shared + suffix.encode()
    for entry in library.gradient:
        entry.function_name += suffix if entry.function_name in names else ""
        entry.gradient_func += suffix if entry.gradient_func in names else ""


# Ops that only move data or call: Grappler's rewrites cannot change what a function made of
# these alone computes (its numbers come from the XLA program), so its pass, ~0.2 s of a full-size
# pixel signature's first call, is skipped for such functions. Any other op keeps it (on the
# decoding signatures it rounds differently: tests/test_saved_functions.py checks every signature
# against tf.saved_model.load's, bit for bit).
PLUMBING_OPS = frozenset(("Const", "Identity", "IdentityN", "NoOp", "PreventGradient", "StopGradient",
                          "ReadVariableOp", "StatefulPartitionedCall", "PartitionedCall", "StridedSlice",
                          "Reshape", "Shape", "Pack", "Squeeze", "ExpandDims", "XlaCallModule"))
_configs: dict = {}


def _config(serialized: bytes, plumbing: bool) -> bytes:
    if not plumbing:
        return serialized
    lean = _configs.get(serialized)
    if lean is None:
        config = config_pb2.ConfigProto.FromString(serialized)
        config.graph_options.rewrite_options.disable_meta_optimizer = True
        lean = _configs[serialized] = config.SerializeToString()
    return lean


_loaded: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()
_loaded_lock = threading.Lock()


def _stamp(path: str) -> tuple:
    """The export's files that loading reads, with their sizes and times: changes when they do."""
    names = ["saved_model.pb"]
    variables = os.path.join(path, "variables")
    if os.path.isdir(variables):
        names += sorted(os.path.join("variables", n) for n in os.listdir(variables))
    out = []
    for name in names:
        st = os.stat(os.path.join(path, name))
        out.append((name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def shared(path: str) -> "SavedFunctions":
    """The export's SavedFunctions, shared by every load of the same unchanged folder on the same
    device in this process while one is in use: the weights are only read, so two models of one
    export (a library user's, a Beam worker's threads, a test's) hold them once."""
    if tf.distribute.has_strategy():
        raise NotLoadable("inside a tf.distribute strategy scope")
    key = (os.path.realpath(path), _stamp(path), context.context().device_name)
    with _loaded_lock:
        loaded = _loaded.get(key)
        if loaded is None:
            loaded = _loaded[key] = SavedFunctions(path)
    return loaded


def _call(name: str, num_outputs: int, inputs: list, plumbing: bool = False) -> list:
    """Runs a function of the runtime's library eagerly, as a loaded ConcreteFunction does."""
    ctx = context.context()
    attrs = ("executor_type", ctx.function_call_options.executor_type or "",
             "config_proto", _config(ctx.function_call_options.config_proto_serialized, plumbing))
    return execute.execute(name, num_outputs, inputs, attrs, ctx)


def _ops_by_function(library) -> dict:
    """{function name: every op it runs, through the functions it calls}."""
    fdefs = {f.signature.name: f for f in library.function}
    memo: dict = {}

    def ops(name: str, visiting: frozenset) -> frozenset:
        if name in memo:
            return memo[name]
        found, calls = set(), set()
        for node in fdefs[name].node_def:
            (calls if node.op in fdefs else found).add(node.op)
            for attr in node.attr.values():
                kind = attr.WhichOneof("value")
                if kind == "func":
                    calls.add(attr.func.name)
                elif kind == "list":
                    calls.update(f.name for f in attr.list.func)
        for callee in calls - visiting - {name}:
            if callee in fdefs:
                found |= ops(callee, visiting | {name})
        memo[name] = frozenset(found)
        return memo[name]

    return {name: ops(name, frozenset()) for name in fdefs}


class SavedFunction:
    """One concrete function of the export: `structured_input_signature`, `structured_outputs`,
    and a call with the inputs as keywords (a signature) or positionally, like a ConcreteFunction."""

    def __init__(self, loaded: "SavedFunctions", name: str, saved, fdef, plumbing: bool = False):
        self._loaded, self.name, self._plumbing = loaded, name, plumbing
        self.structured_input_signature = nested_structure_coder.decode_proto(saved.canonicalized_input_signature)
        self.structured_outputs = nested_structure_coder.decode_proto(saved.output_signature)
        self._bound = list(saved.bound_inputs)
        self._num_inputs = len(fdef.signature.input_arg) - len(self._bound)
        self._input_names = [a.name for a in fdef.signature.input_arg[: self._num_inputs]]
        self._num_outputs = len(fdef.signature.output_arg)
        flat_in = tf.nest.flatten(self.structured_input_signature, expand_composites=True)
        flat_out = tf.nest.flatten(self.structured_outputs, expand_composites=True)
        if len(flat_in) != self._num_inputs or len(flat_out) != self._num_outputs \
                or not all(isinstance(s, tf.TensorSpec) for s in flat_in + flat_out):
            raise NotLoadable(f"{name}: inputs or outputs other than plain tensors")

    def _flat_inputs(self, args, kwargs) -> list:
        pos_specs, kw_specs = self.structured_input_signature
        if not pos_specs and kw_specs and args:
            # A signature called positionally: its inputs in the function's own order.
            if len(args) > len(self._input_names):
                raise TypeError(f"{self.name}: {len(args)} positional inputs, takes {len(self._input_names)}")
            kwargs = {**dict(zip(self._input_names, args)), **kwargs}
            args = ()
        if len(args) != len(pos_specs) or set(kwargs) != set(kw_specs):
            want = list(kw_specs) or [f"{len(pos_specs)} positional inputs"]
            raise TypeError(f"{self.name}: called with {sorted(kwargs) or len(args)}, takes {want}")
        flat = []
        for value, spec in zip(tf.nest.flatten((tuple(args), kwargs)), tf.nest.flatten((pos_specs, kw_specs))):
            tensor = tf.convert_to_tensor(value, dtype=spec.dtype)
            if not spec.shape.is_compatible_with(tensor.shape):
                raise ValueError(f"{self.name}: input {spec.name or ''} of shape {tensor.shape}, "
                                 f"expected {spec.shape}")
            flat.append(tensor)
        return flat

    def __call__(self, *args, **kwargs):
        flat = self._flat_inputs(args, kwargs) + self._loaded.captures(self._bound)
        outputs = _call(self.name, self._num_outputs, flat, self._plumbing)
        return tf.nest.pack_sequence_as(self.structured_outputs, outputs, expand_composites=True)


class SavedFunctions:
    """`signatures` (name -> SavedFunction) and `functions` (a tf.function the module tracks ->
    its SavedFunctions) of one export, its variables restored. Removes its functions from the
    runtime when collected."""

    def __init__(self, path: str):
        if tf.distribute.has_strategy():
            raise NotLoadable("inside a tf.distribute strategy scope")
        meta_graph = _read_proto(path)
        self.path = path
        self._graph = meta_graph.object_graph_def
        self._nodes_kind = [n.WhichOneof("kind") for n in self._graph.nodes]
        self._graph_nodes = {n.name: n for n in meta_graph.graph_def.node}
        self._assets = list(meta_graph.asset_file_def)
        self._lock = threading.RLock()  # a resource's initializer captures the resource being made
        self._captured: dict = {}
        self._destroy: list = []  # (function name, captured inputs) to call when collected

        library = meta_graph.graph_def.library
        ops = _ops_by_function(library)  # by the names as saved
        tf_import.register_text_ops()
        tf_import.ensure_ops(frozenset().union(*ops.values()))
        suffix = f"_vila_tf{next(_loads)}_{os.getpid()}"
        _rename(library, suffix)
        ctx = context.context()
        ctx.ensure_initialized()
        added = []
        for fdef in library.function:
            ctx.add_function_def(fdef)
            added.append(fdef.signature.name)
        weakref.finalize(self, _release, self._destroy, added)
        fdefs = {f.signature.name: f for f in library.function}

        def function(name: str) -> SavedFunction:
            saved = self._graph.concrete_functions.get(name)
            if saved is None or name + suffix not in fdefs:
                raise NotLoadable(f"function {name} is not in the library")
            return SavedFunction(self, name + suffix, saved, fdefs[name + suffix],
                                 plumbing=ops[name] <= PLUMBING_OPS)

        self._function = function
        self.signatures, self.functions = {}, {}
        for child in self._graph.nodes[0].children:
            node = self._graph.nodes[child.node_id]
            if child.local_name == "signatures":
                for sig in node.children:
                    sig_node = self._graph.nodes[sig.node_id]
                    if sig_node.WhichOneof("kind") != "bare_concrete_function":
                        raise NotLoadable(f"signature {sig.local_name} is not a concrete function")
                    self.signatures[sig.local_name] = function(sig_node.bare_concrete_function.concrete_function_name)
            elif node.WhichOneof("kind") == "function":
                self.functions[child.local_name] = [function(n) for n in node.function.concrete_functions]
        self._variables = self._restore_variables(os.path.join(path, "variables", "variables"))

    # -- captured inputs ---------------------------------------------------------------------------
    def _restore_variables(self, prefix: str) -> dict:
        ids = [i for i, kind in enumerate(self._nodes_kind) if kind == "variable"]
        if not ids and not os.path.isfile(prefix + ".index"):
            return {}
        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(gen_io_ops.restore_v2(prefix, [OBJECT_GRAPH_KEY], [""], [tf.string])[0].numpy())
        if len(graph.nodes) != len(self._graph.nodes):
            raise NotLoadable("the checkpoint's object graph is not the SavedModel's")
        keys = []
        for i in ids:
            attrs = [a.checkpoint_key for a in graph.nodes[i].attributes if a.name == "VARIABLE_VALUE"]
            if len(attrs) != 1:
                raise NotLoadable(f"variable node {i} has no single value in the checkpoint")
            keys.append(attrs[0])
        for i, kind in enumerate(self._nodes_kind):
            if kind != "variable" and graph.nodes[i].attributes:
                raise NotLoadable(f"node {i} ({kind}) has values in the checkpoint")
        if not ids:
            return {}
        protos = [self._graph.nodes[i].variable for i in ids]
        values = _read_values(prefix, keys, [p.dtype for p in protos],
                              [tf.TensorShape(p.shape).num_elements() or 1 for p in protos])
        # Bare variable handles, not tf.Variable objects (0.3 s of a full-size load for 487 of
        # them): the functions only read them. Anonymous: each variable is freed with its handle,
        # when the loader is collected.
        handles = {}
        for i, value in zip(ids, values):
            handle = gen_resource_variable_ops.var_handle_op(dtype=value.dtype, shape=value.shape,
                                                             shared_name=context.anonymous_name())
            gen_resource_variable_ops.assign_variable_op(handle, value)
            handles[i] = handle
        return handles

    def captures(self, node_ids: list) -> list:
        out = []
        for i in node_ids:
            handle = self._variables.get(i)
            out.append(handle if handle is not None else self._captured_tensor(i))
        return out

    def _captured_tensor(self, node_id: int):
        with self._lock:
            tensor = self._captured.get(node_id)
            if tensor is None:
                tensor = self._captured[node_id] = self._make(node_id)
        return tensor

    def _make(self, node_id: int):
        node, kind = self._graph.nodes[node_id], self._nodes_kind[node_id]
        if kind == "constant":
            return tf.constant(tensor_util.MakeNdarray(self._graph_nodes[node.constant.operation].attr["value"].tensor))
        if kind == "asset":
            return tf.constant(os.path.join(self.path, "assets", self._assets[node.asset.asset_file_def_index].filename))
        if kind == "resource":
            children = {c.local_name: c.node_id for c in node.children}
            create = self._only_function(children.get("_create_resource"))
            with tf.device(node.resource.device) if node.resource.device else contextlib.nullcontext():
                handle = create()
            self._captured[node_id] = handle  # _initialize captures the resource itself
            init = children.get("_initialize")
            if init is not None:
                self._only_function(init)()
            destroy = children.get("_destroy_resource")
            if destroy is not None:
                fn = self._only_function(destroy)
                self._destroy.append((fn.name, fn._num_outputs, self.captures(fn._bound)))
            return handle
        raise NotLoadable(f"a function captures node {node_id} ({kind})")

    def _only_function(self, node_id: Optional[int]) -> SavedFunction:
        if node_id is None or self._nodes_kind[node_id] != "function" \
                or len(self._graph.nodes[node_id].function.concrete_functions) != 1:
            raise NotLoadable(f"node {node_id} is not a function of one trace")
        return self._function(self._graph.nodes[node_id].function.concrete_functions[0])


def _read_values(prefix: str, keys: list, dtypes: list, sizes: list) -> list:
    """The checkpoint's values of `keys`: RestoreV2 calls side by side, up to READ_CALLS, each on
    a share of the bytes (one call reads and checksums every shard on one core)."""
    calls = max(1, min(READ_CALLS, os.cpu_count() or 1, len(keys)))
    if calls == 1:
        return list(gen_io_ops.restore_v2(prefix, keys, [""] * len(keys), dtypes))
    shares, loads = [[] for _ in range(calls)], [0] * calls
    for k in sorted(range(len(keys)), key=lambda k: -sizes[k]):
        least = loads.index(min(loads))
        shares[least].append(k)
        loads[least] += sizes[k]

    def read(share):
        return gen_io_ops.restore_v2(prefix, [keys[k] for k in share], [""] * len(share), [dtypes[k] for k in share])

    values = [None] * len(keys)
    with concurrent.futures.ThreadPoolExecutor(calls, thread_name_prefix="vila-tf-read") as pool:
        for share, part in zip(shares, pool.map(read, shares)):
            for k, value in zip(share, part):
                values[k] = value
    return values


def _release(destroy: list, functions: list) -> None:
    """Destroys the resources made and removes the functions added (when the loader is collected)."""
    try:
        for name, num_outputs, inputs in destroy:
            _call(name, num_outputs, inputs)
        ctx = context.context()
        for name in functions:
            ctx.remove_function(name)
    except Exception:  # noqa: BLE001  (at interpreter exit the runtime may be gone already)
        pass
