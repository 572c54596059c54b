"""Channel pruning removes convolution channels that run privately to the next layer: the
kernels, the file and the compute shrink, channels that carry nothing go first, and a
channel another branch also reads is left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from webapp.engine import search
from webapp.engine.errors import TechniqueFailed
from webapp.engine.techniques import TECHNIQUES
from webapp.engine.techniques.channels import kept_channels, prune_channels


def _save(path, nodes, inits, output_shape):
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *output_shape])],
        [
            numpy_helper.from_array(np.asarray(a, dtype=np.int64 if n == "flat" else np.float32), n)
            for n, a in inits.items()
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _cnn(path, style):
    """conv1 (3 → 8) → batch norm → Relu → depthwise conv → gate → conv2 (8 → 6) → Relu →
    MaxPool → flatten → Gemm, in two exporters' styles: "torch" (SiLU as x * sigmoid(x), a
    Reshape to [-1, 96]) and "paddle" (hard-swish as x * clip(x + 3, 0, 6) / 6, Flatten, and
    the batch norm's parameters in Constant nodes). Two of conv1's channels and one of
    conv2's carry nothing: zero kernels and biases, and batch norm parameters that keep zero
    at zero."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(size=(8, 3, 3, 3)), rng.normal(size=8)
    w1[[2, 5]], b1[[2, 5]] = 0.0, 0.0
    scale, shift = rng.uniform(0.5, 1.5, 8), rng.normal(size=8)
    mean, variance = rng.normal(size=8), rng.uniform(0.5, 1.5, 8)
    shift[[2, 5]], mean[[2, 5]] = 0.0, 0.0
    dw, dw_bias = rng.normal(size=(8, 1, 3, 3)), rng.normal(size=8)
    dw_bias[[2, 5]] = 0.0
    w2, b2 = rng.normal(size=(6, 8, 3, 3)), rng.normal(size=6)
    w2[4], b2[4] = 0.0, 0.0
    fc = rng.normal(size=(5, 6 * 4 * 4))  # Gemm transB=1: [out, in]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "scale", "shift", "mean", "var"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "dw", "dw_bias"], ["d1"], pads=[1, 1, 1, 1], group=8),
        *(
            [
                helper.make_node("Sigmoid", ["d1"], ["s1"]),
                helper.make_node("Mul", ["d1", "s1"], ["a1"]),
            ]
            if style == "torch"
            else [
                helper.make_node("Add", ["d1", "three"], ["h1"]),
                helper.make_node("Clip", ["h1", "zero", "six"], ["h2"]),
                helper.make_node("Mul", ["d1", "h2"], ["h3"]),
                helper.make_node("Div", ["h3", "six"], ["a1"]),
            ]
        ),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p2", "flat"], ["f"])
        if style == "torch"
        else helper.make_node("Flatten", ["p2"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    batch_norm = {"scale": scale, "shift": shift, "mean": mean, "var": variance}
    inits = {"w1": w1, "b1": b1, "dw": dw, "dw_bias": dw_bias, "w2": w2, "b2": b2, "fc": fc}
    if style == "torch":
        inits |= {**batch_norm, "flat": [-1, 96]}
    else:
        inits |= {"three": 3.0, "zero": 0.0, "six": 6.0}
        constants = [
            helper.make_node("Constant", [], [name], value=numpy_helper.from_array(a.astype(np.float32)))
            for name, a in batch_norm.items()
        ]
        nodes = constants + nodes
    return _save(path, nodes, inits, [5])


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _prune(src, dst, share):
    return prune_channels(src, dst, share)


@pytest.mark.parametrize("style", ["torch", "paddle"])
def test_removing_channels_that_carry_nothing_changes_nothing_and_shrinks_the_model(tmp_path, style):
    src = _cnn(tmp_path / "cnn.onnx", style)
    out = tmp_path / "pruned.onnx"
    details = _prune(src, out, 0.25)
    assert [layer["channels"] for layer in details["layers"]] == [[8, 6], [6, 4]]
    assert details["parameters_after"] < details["parameters_before"]
    shapes = {t.name: list(t.dims) for t in onnx.load(str(out)).graph.initializer}
    assert shapes["w1"] == [6, 3, 3, 3] and shapes["b1"] == [6] and shapes["scale"] == [6]
    assert shapes["dw"] == [6, 1, 3, 3] and shapes["w2"] == [4, 6, 3, 3] and shapes["fc"] == [5, 4 * 16]
    assert out.stat().st_size < src.stat().st_size
    # The dead channels went (1 dead of conv2's 6 and the next-weakest), and with them nothing
    # else: conv1's output is unchanged exactly where its dead channels were removed.
    x = np.random.default_rng(1).normal(size=(4, 3, 8, 8)).astype(np.float32)
    exact = tmp_path / "exact.onnx"
    assert _prune(src, exact, 0.2)["layers"] == [
        {"layer": "w1", "channels": [8, 6]},
        {"layer": "w2", "channels": [6, 5]},
    ]
    np.testing.assert_allclose(_run(exact, x), _run(src, x), rtol=1e-4, atol=1e-4)
    assert _run(out, x).shape == (4, 5)


def test_a_channel_another_branch_reads_is_left_alone(tmp_path):
    """conv1 → Relu → conv2, with conv1's output also added back after conv2 (a residual):
    removing one of conv1's channels would change the sum, so no lane qualifies."""
    rng = np.random.default_rng(0)

    def two_convs(name, nodes):
        weights = {"w1": rng.normal(size=(3, 3, 3, 3)), "w2": rng.normal(size=(3, 3, 3, 3))}
        return _save(tmp_path / name, nodes, weights, [3, 8, 8])

    residual = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "x"], ["y"]),
    ]
    # conv2's output meets the input in an Add, and conv1's lane is conv2: only that one.
    details = _prune(two_convs("res.onnx", residual), tmp_path / "o.onnx", 0.34)
    assert details["layers"] == [{"layer": "w1", "channels": [3, 2]}]

    branching = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "c1"], ["y"]),
    ]
    src = two_convs("branch.onnx", branching)
    with pytest.raises(TechniqueFailed) as caught:
        _prune(src, tmp_path / "o2.onnx", 0.34)
    assert "privately" in caught.value.message


def test_widths_made_of_blocks_of_eight_lose_whole_blocks():
    """ONNX Runtime's x86 convolutions are fastest on multiples of 8 channels."""
    assert kept_channels(32, 0.1) == 32  # 28.8 is nearer 32 than 24: nothing to remove
    assert kept_channels(32, 0.25) == 24
    assert kept_channels(64, 0.1) == 56
    assert kept_channels(16, 0.25) == 16  # a tie keeps more
    assert kept_channels(16, 0.5) == 8
    assert kept_channels(6, 0.25) == 4  # not made of blocks: the nearest count
    assert kept_channels(8, 0.9) == 1


def test_the_search_tries_channels_on_convolutional_models_only():
    everything = {"quantization", "compression", "pruning"}
    conv = [c.words for c in search.space(everything, {"Conv", "Relu"}, has_data=True)]
    assert "10 % of conv channels removed" in conv and "25 % of conv channels removed" in conv
    dense = [c.words for c in search.space(everything, {"Gemm", "Relu"}, has_data=True)]
    assert not any("channels" in w for w in dense)
    params = TECHNIQUES["pruning"].params().load({"sparsity": 0.25, "structure": "channels"})
    assert TECHNIQUES["pruning"].best_size_reduction(params) > 0


def test_the_pruned_file_carries_onnx_runtimes_basic_graph_optimizations(tmp_path):
    """What the technique hands on is the graph ONNX Runtime would build at load: batch norm
    folded into the convolution, Constant nodes folded, the same outputs."""
    src = _cnn(tmp_path / "cnn.onnx", "paddle")
    plain, saved = tmp_path / "plain.onnx", tmp_path / "saved.onnx"
    prune_channels(src, plain, 0.2)
    details = TECHNIQUES["pruning"].apply(
        src, saved, {"sparsity": 0.2, "structure": "channels"}, None, 1, lambda: None
    )
    assert details["graph_optimizations_saved"] is True
    ops = {node.op_type for node in onnx.load(str(saved)).graph.node}
    assert "BatchNormalization" in {node.op_type for node in onnx.load(str(plain)).graph.node}
    assert not ops & {"BatchNormalization", "Constant"}
    assert ops <= {"Conv", "Relu", "Sigmoid", "Mul", "Add", "Clip", "Div", "MaxPool", "Flatten", "Gemm"}
    x = np.random.default_rng(3).normal(size=(4, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(saved, x), _run(plain, x), rtol=1e-4, atol=1e-4)
