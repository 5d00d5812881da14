"""An ``.onnx`` file checked before onnxruntime opens it: the file is untrusted input.

A valid ONNX graph can still be hostile. A few KB holding a ``ConstantOfShape`` of
2 GiB made every prediction allocate gigabytes (onnxruntime may even fold such a
constant while it opens the session), an output of strings or a scalar crashed every
request, and external data or control flow reach beyond what ``imageclf export``
writes. So the graph is read with ``onnx`` first and refused, in one ``BundleError``
line, unless:

- it is one self-contained file (no external data) without subgraphs (Loop, Scan, If);
- its signature is the export's: ``images`` uint8 N x S x S x 3 in, ``logits`` float32
  N x classes out, S and classes as its metadata says;
- with the batch fixed to one picture, ONNX shape inference knows the size of every
  tensor the graph makes, none is over ``MAX_TENSOR_BYTES`` and all of them together
  are under ``MAX_GRAPH_BYTES`` (a bound: onnxruntime reuses buffers).

Our own exports pass all of it, the int8 ones too (``quantize``: QuantizeLinear and
DequantizeLinear are standard ONNX ops whose shapes inference knows, so the checks
above hold unchanged; their opset imports are trimmed to the standard domain); what
inference cannot see (values, rows per batch) is checked by running the graph:
``onnx_backend``'s probe pass and every pass after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BundleError, import_extra

MB = 1024 * 1024
# One picture's largest intermediate tensor, and all of them added up. Exported here,
# the best recipe's net (fast, widths 64/256/256) at the largest input size (512) makes
# a 64 MB tensor and 765 MB in all per picture; EfficientNet-Lite0 at 512: 24 and 284 MB.
MAX_TENSOR_BYTES = 256 * MB
MAX_GRAPH_BYTES = 4096 * MB
MAX_FILE_BYTES = 512 * MB  # the exported models are 0.1-20 MB
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class GraphFacts:
    """What ``imageclf info`` says about an ONNX file besides its metadata."""

    opset: int | None
    numbers: int  # stored weights: the elements of every initializer
    props: dict[str, str]  # the metadata props (``onnx_backend`` reads its own key)


def _onnx():
    return import_extra("onnx", "onnx", "reading an ONNX model (onnx)")


def inspect_graph(data: bytes, path: Path) -> Any:
    """The parsed model (an ``onnx.ModelProto``) after the checks that need no metadata,
    or one ``BundleError`` line."""
    onnx = _onnx()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's own types for bad bytes
        raise BundleError(f"{path} is not a readable ONNX model ({_first_line(exc)})") from None
    external = [t.name for t in model.graph.initializer if t.data_location == t.EXTERNAL]
    if external:
        raise BundleError(
            f"{path} keeps weights in other files (external data, e.g. {external[0]!r}); "
            "'imageclf export' writes one self-contained file"
        )
    for node in model.graph.node:
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            raise BundleError(
                f"{path}: the graph has control flow ({node.op_type}), which "
                "'imageclf export' never writes"
            )
    return model


def facts(model: Any) -> GraphFacts:
    """Opset, stored numbers and metadata props of a parsed model."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    numbers = 0
    for tensor in model.graph.initializer:
        count = 1
        for dim in tensor.dims:
            count *= dim
        numbers += count
    return GraphFacts(opset, numbers, {p.key: p.value for p in model.metadata_props})


def check_signature(model: Any, path: Path, size: int, classes: int) -> None:
    """``images`` uint8 N x S x S x 3 in, ``logits`` float32 N x classes out."""
    onnx = _onnx()
    graph = model.graph
    stored = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in stored]
    expected = f"expected {INPUT_NAME} uint8 Nx{size}x{size}x3 -> {OUTPUT_NAME} float32 Nx{classes}"
    if not graph.output or graph.output[0].name != OUTPUT_NAME:
        raise BundleError(f"{path}: the graph has no output {OUTPUT_NAME!r} ({expected})")
    out = graph.output[0].type.tensor_type
    if out.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(out.elem_type).lower() if out.elem_type else "?"
        raise BundleError(
            f"{path}: the graph's {OUTPUT_NAME} are {kind} values, not float32 numbers ({expected})"
        )
    rank = len(out.shape.dim) if out.HasField("shape") else None
    if rank != 2:
        what = "of unknown rank" if rank is None else f"of rank {rank}"
        raise BundleError(
            f"{path}: the graph's {OUTPUT_NAME} are {what}, not N x classes ({expected})"
        )
    ok = (
        len(inputs) == 1
        and inputs[0].name == INPUT_NAME
        and inputs[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
        and _dims(inputs[0])[1:] == [size, size, 3]
        and _dims(graph.output[0])[1] in (classes, None)
    )
    if not ok:
        raise BundleError(
            f"{path}: the graph's inputs/outputs do not match its metadata ({expected})"
        )


def _dims(value: Any) -> list[int | None]:
    """A value's dims: numbers where fixed, None where symbolic (the batch)."""
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def check_sizes(model: Any, path: Path) -> None:
    """Every tensor's size known before the graph runs, for one picture, and bounded
    (after ``check_signature``: the input is ``images``, of rank 4)."""
    onnx = _onnx()
    images = next(i for i in model.graph.input if i.name == INPUT_NAME)
    batch = images.type.tensor_type.shape.dim[0]
    batch.Clear()
    batch.dim_value = 1  # sizes per picture (the model is the caller's; they pass bytes on)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:  # onnx's InferenceError and friends
        raise BundleError(
            f"{path}: the graph's shapes do not check out ({_first_line(exc)})"
        ) from None
    graph = inferred.graph
    known = {v.name: v for v in [*graph.value_info, *graph.output]}
    total = 0
    for node in graph.node:
        for name in filter(None, node.output):
            size = _bytes(known.get(name))
            if size is None:
                raise BundleError(
                    f"{path}: the size of {node.op_type} output {name!r} is only known when "
                    "the graph runs; 'imageclf export' never writes such graphs"
                )
            if size > MAX_TENSOR_BYTES:
                raise BundleError(
                    f"{path}: the graph's {node.op_type} output {name!r} takes "
                    f"{size / MB:,.0f} MB for one picture; at most {MAX_TENSOR_BYTES // MB} MB"
                )
            total += size
    if total > MAX_GRAPH_BYTES:
        raise BundleError(
            f"{path}: the graph's tensors take {total / MB:,.0f} MB for one picture; "
            f"at most {MAX_GRAPH_BYTES // MB} MB"
        )


def _bytes(value: Any) -> int | None:
    """A value's size in bytes, or None when inference left any of it unknown."""
    if value is None or not value.type.HasField("tensor_type"):
        return None
    tensor = value.type.tensor_type
    if not tensor.elem_type or not tensor.HasField("shape"):
        return None
    count = 1
    for dim in tensor.shape.dim:
        if not dim.HasField("dim_value") or dim.dim_value < 0:
            return None
        count *= dim.dim_value
    return count * _itemsize(tensor.elem_type)


def _itemsize(elem_type: int) -> int:
    """Bytes per element (8 for strings and types numpy lacks: a safe overestimate)."""
    from onnx import helper

    try:
        return max(1, helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    except (KeyError, ValueError, TypeError):
        return 8


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
