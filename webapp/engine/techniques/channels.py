"""Structured pruning of convolution channels: a channel a convolution produces and the
next layer reads is removed from both, so the kernels, the file and the compute shrink.

A channel can be removed only where its lane is private: the producing convolution's
output reaches one consumer (another convolution, or a dense layer after Flatten) through
operators that treat each channel on its own (activations, pooling, batch norm, depthwise
convolutions, arithmetic with a scalar, gates such as SiLU and hard-swish). A lane that
meets a residual Add, a Concat or a Reshape is left alone: removing a channel there would
change what the other branch sees.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import TechniqueFailed
from .onnx_graph import load_with_weights
from .pruning import ELEMENTWISE, Dense, dense_layer, parameters, save_narrowed, store

# Operators that keep channels apart and take the lane as their first input only.
PER_CHANNEL = ELEMENTWISE | {
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "LpPool",
    "Identity",
    "Dropout",
    "Clip",
}
# Element-wise with a second operand: per channel when that operand is one number.
WITH_SCALAR = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}
# ONNX Runtime's x86 convolutions (MLAS's NCHWc layout) work on blocks of 8 channels: on
# the demo CNN, 14 and 29 channels ran 1.5x slower than the original 16 and 32, while
# 12 and 24 ran 1.2x faster. A width that is a multiple of 8 stays one.
CHANNEL_BLOCK = 8


@dataclass
class _Conv:
    node: onnx.NodeProto
    weight: onnx.TensorProto  # [out, in / group, *kernel]
    bias: onnx.TensorProto | None

    @property
    def group(self) -> int:
        return next((a.i for a in self.node.attribute if a.name == "group"), 1)


@dataclass
class _Lane:
    """A producer's channels, what they pass through, and who reads them."""

    producer: _Conv
    # each batch norm's node and its scale, bias, mean and variance
    batch_norms: list[tuple[onnx.NodeProto, list[onnx.TensorProto]]] = field(default_factory=list)
    depthwise: list[_Conv] = field(default_factory=list)
    consumer_conv: _Conv | None = None
    consumer_dense: Dense | None = None  # after a Flatten (or a Reshape that flattens)
    flat_shape: onnx.TensorProto | None = None  # that Reshape's [-1, C * H * W]


class _Graph:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.inits = {t.name: t for t in model.graph.initializer}
        self.uses = Counter(name for node in model.graph.node for name in node.input)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in model.graph.output}
        self.shapes = _inferred_shapes(model)
        self.constants = {
            node.output[0]: next((a.t for a in node.attribute if a.name == "value"), None)
            for node in model.graph.node
            if node.op_type == "Constant"
        }

    def private(self, name: str) -> onnx.TensorProto | None:
        """The float initializer `name`, when no other node reads it."""
        tensor = self.inits.get(name)
        if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT or self.uses[name] != 1:
            return None
        return tensor

    def conv(self, node: onnx.NodeProto) -> _Conv | None:
        if node.op_type != "Conv" or len(node.input) < 2:
            return None
        weight = self.private(node.input[1])
        if weight is None or len(weight.dims) < 3:
            return None
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = self.private(node.input[2])
            if bias is None or list(bias.dims) != [weight.dims[0]]:
                return None
        return _Conv(node, weight, bias)

    def extra_outputs_used(self, node: onnx.NodeProto) -> bool:
        """A MaxPool's indices or a batch norm's running statistics are read somewhere."""
        return any(self.consumers.get(o) or o in self.outputs for o in node.output[1:])

    def scalar(self, name: str) -> bool:
        tensor = self.inits.get(name) or self.constants.get(name)
        return tensor is not None and int(np.prod(tensor.dims)) == 1

    def passes_through(self, node: onnx.NodeProto, tensor: str) -> bool:
        """The node keeps channels apart and reads `tensor` as its data input only."""
        if node.input[0] != tensor or self.extra_outputs_used(node):
            return False
        others = [name for name in node.input[1:] if name]
        if node.op_type in PER_CHANNEL:
            return all(self.scalar(name) for name in others)
        if node.op_type in WITH_SCALAR:
            return len(others) == 1 and self.scalar(others[0])
        return False

    def gated(self, tensor: str) -> str | None:
        """x * f(x) where f keeps channels apart, as exporters write SiLU (x * sigmoid(x)) and
        hard-swish (x * clip(x + 3, 0, 6), then / 6): the product's output, or None."""
        users = self.consumers.get(tensor, [])
        if len(users) != 2:
            return None
        for mul, branch in (users, users[::-1]):
            if mul.op_type != "Mul" or branch is mul:
                continue
            node, before, steps = branch, tensor, 0
            while steps < len(self.model.graph.node) and (
                (node.op_type in ELEMENTWISE and node.input[0] == before) or self.passes_through(node, before)
            ):
                steps += 1
                before = node.output[0]
                after = self.consumers.get(before, [])
                if after == [mul] and sorted(mul.input) == sorted([tensor, before]):
                    return mul.output[0]
                if len(after) != 1:
                    break
                node = after[0]
        return None

    def batch_norm(self, node: onnx.NodeProto, channels: int) -> bool:
        if node.op_type != "BatchNormalization" or len(node.input) != 5:
            return False
        if self.extra_outputs_used(node):
            return False
        params = [self.private(name) for name in node.input[1:]]
        return all(p is not None and list(p.dims) == [channels] for p in params)

    def flattens(self, node: onnx.NodeProto, tensor: str) -> tuple[bool, onnx.TensorProto | None]:
        """Whether the node flattens `tensor` to [batch, C * H * W] (a Flatten at axis 1, or a
        Reshape to [-1, K] or [0, -1], as torch's exporter writes `flatten`), and the shape
        tensor whose K must follow the channel count."""
        if node.input[0] != tensor:
            return False, None
        if node.op_type == "Flatten":
            return next((a.i for a in node.attribute if a.name == "axis"), 1) == 1, None
        if node.op_type != "Reshape" or len(node.input) != 2:
            return False, None
        shape = self.inits.get(node.input[1])
        if shape is None or shape.data_type != onnx.TensorProto.INT64 or self.uses[shape.name] != 1:
            return False, None
        dims = [int(v) for v in numpy_helper.to_array(shape).ravel()]
        keeps_zero = next((a.i for a in node.attribute if a.name == "allowzero"), 0) == 0
        if len(dims) == 2 and keeps_zero and dims[0] == 0 and dims[1] == -1:
            return True, None
        # [-1, K] keeps the batch only when K is one sample's size: shape inference must say so.
        sample = self.shapes.get(tensor, [])[1:]
        if len(dims) == 2 and dims[0] == -1 and sample and all(isinstance(d, int) for d in sample):
            return math.prod(int(d) for d in sample) == dims[1], shape
        return False, None

    def lane(self, producer: _Conv) -> _Lane | None:
        """Follow the producer's output to the layer that reads its channels."""
        channels = producer.weight.dims[0]
        lane = _Lane(producer)
        tensor, flattened = producer.node.output[0], False
        seen: set[str] = set()  # a graph with a cycle (not a valid model) must not hang the walk
        while tensor not in self.outputs and tensor not in seen:
            seen.add(tensor)
            after_gate = None if flattened else self.gated(tensor)
            if after_gate is not None:
                tensor = after_gate
                continue
            users = self.consumers.get(tensor, [])
            if len(users) != 1:
                return None
            node = users[0]
            if node.op_type in ELEMENTWISE and len(node.input) == 1:
                tensor = node.output[0]
                continue
            if flattened:
                dense = dense_layer(node, self.inits, self.consumers, self.uses)
                if dense is None or node.input[0] != tensor or dense.matrix().shape[0] % channels:
                    return None
                lane.consumer_dense = dense
                return lane
            if self.passes_through(node, tensor):
                tensor = node.output[0]
                continue
            if self.batch_norm(node, channels) and node.input[0] == tensor:
                lane.batch_norms.append((node, [self.inits[name] for name in node.input[1:]]))
                tensor = node.output[0]
                continue
            flattened, lane.flat_shape = self.flattens(node, tensor)
            if flattened:
                tensor = node.output[0]
                continue
            conv = self.conv(node)
            if conv is None or node.input[0] != tensor:
                return None
            if conv.group == channels and list(conv.weight.dims[:2]) == [channels, 1]:
                lane.depthwise.append(conv)
                tensor = node.output[0]
                continue
            if conv.group != 1 or conv.weight.dims[1] != channels:
                return None
            lane.consumer_conv = conv
            return lane
        return None


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    """Each tensor's shape as ONNX's shape inference sees it (a dim it cannot tell is a
    name); empty when inference fails, so what needs a shape is left alone."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a graph inference cannot follow: no shapes, not no pruning
        return {}
    return {
        info.name: [
            d.dim_value if d.HasField("dim_value") else d.dim_param for d in info.type.tensor_type.shape.dim
        ]
        for info in inferred.graph.value_info
    }


def _array(tensor: onnx.TensorProto) -> np.ndarray:
    return numpy_helper.to_array(tensor)


def _importance(lane: _Lane) -> np.ndarray:
    """How much each channel carries: the norm of what makes it (its kernel, scaled by any
    batch norm and depthwise kernel on the way) times the norm of what reads it."""
    made = np.linalg.norm(_array(lane.producer.weight).reshape(lane.producer.weight.dims[0], -1), axis=1)
    for node, params in lane.batch_norms:
        scale, _, _, variance = (_array(t) for t in params)
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        made = made * np.abs(scale / np.sqrt(variance + epsilon))
    for conv in lane.depthwise:
        made = made * np.linalg.norm(_array(conv.weight).reshape(conv.weight.dims[0], -1), axis=1)
    channels = len(made)
    if lane.consumer_conv is not None:
        read = _array(lane.consumer_conv.weight)
        used = np.linalg.norm(np.moveaxis(read, 1, 0).reshape(channels, -1), axis=1)
    else:
        assert lane.consumer_dense is not None  # a lane ends at a convolution or a dense layer
        rows = lane.consumer_dense.matrix()
        used = np.linalg.norm(rows.reshape(channels, -1), axis=1)
    return made * used


def _cut(model: onnx.ModelProto, lane: _Lane, keep: np.ndarray) -> None:
    channels = lane.producer.weight.dims[0]
    store(model, lane.producer.weight, _array(lane.producer.weight)[keep])
    if lane.producer.bias is not None:
        store(model, lane.producer.bias, _array(lane.producer.bias)[keep])
    for _, params in lane.batch_norms:
        for tensor in params:
            store(model, tensor, _array(tensor)[keep])
    for conv in lane.depthwise:
        store(model, conv.weight, _array(conv.weight)[keep])
        if conv.bias is not None:
            store(model, conv.bias, _array(conv.bias)[keep])
        next(a for a in conv.node.attribute if a.name == "group").i = len(keep)
    if lane.consumer_conv is not None:
        store(model, lane.consumer_conv.weight, _array(lane.consumer_conv.weight)[:, keep])
    else:
        dense = lane.consumer_dense
        assert dense is not None  # a lane ends at a convolution or a dense layer
        # Flatten lays a [C, H, W] map out channel by channel: each channel owns a block of rows.
        rows = dense.matrix()
        kept = rows.reshape(channels, -1, rows.shape[1])[keep].reshape(-1, rows.shape[1])
        store(model, dense.weight, kept.T if dense.transposed else kept)
        if lane.flat_shape is not None:
            lane.flat_shape.CopyFrom(
                numpy_helper.from_array(np.array([-1, kept.shape[0]], dtype=np.int64), lane.flat_shape.name)
            )


def kept_channels(channels: int, share: float) -> int:
    """How many of `channels` stay when `share` goes: the nearest multiple of the block
    (ties keep more) for a width made of blocks, else the nearest count."""
    target = channels * (1 - share)
    if channels % CHANNEL_BLOCK or channels <= CHANNEL_BLOCK:
        return max(1, int(round(target)))
    return max(CHANNEL_BLOCK, CHANNEL_BLOCK * int(np.floor(target / CHANNEL_BLOCK + 0.5)))


def prune_channels(src: Path, dst: Path, share: float) -> dict:
    """Remove `share` of the channels of every convolution whose channels run privately to
    the next layer, those that carry least first."""
    model = load_with_weights(src, min_rank=1)
    graph = _Graph(model)
    lanes = []
    for node in model.graph.node:
        producer = graph.conv(node)
        if producer is None or producer.group != 1:
            continue
        lane = graph.lane(producer)
        if lane is not None:
            lanes.append(lane)
    if not lanes:
        raise TechniqueFailed(
            "No convolution's channels run privately to the next layer (through activations, "
            "pooling or batch norm alone); channel pruning removes channels only there."
        )
    before = parameters(model)
    layers = []
    for lane in lanes:
        channels = lane.producer.weight.dims[0]
        keep_count = kept_channels(channels, share)
        if keep_count >= channels:
            continue
        keep = np.sort(np.argsort(_importance(lane))[-keep_count:])
        _cut(model, lane, keep)
        name = lane.producer.node.name or lane.producer.weight.name
        layers.append({"layer": name, "channels": [channels, keep_count]})
    if not layers:
        raise TechniqueFailed(
            "The convolutions are too narrow to remove a channel at this share (widths made of "
            f"blocks of {CHANNEL_BLOCK} channels lose whole blocks)."
        )
    return save_narrowed(model, dst, "channels", share, layers, before)
