"""Deployment: every kind of cvkit network (ECA, iSQRT-COV head, hyper-/frac-connections; ResNet,
MobileNetV2, ViT) exports with ``torch.export`` at a dynamic batch size, to ONNX and through
``torch.jit.trace``; the exported programs, called with gradients enabled as a user calls them,
compute what the eager model does (at another batch size where the batch is dynamic; onnxruntime
for ONNX)."""
from __future__ import annotations

import pytest
import torch
from torch.export import Dim

import cvkit
from test_models_registry import small_input, small_kwargs

# one of each: the fused ECA residual (two families), the GCP head (eigh in eager, Newton-Schulz
# products in the exported program; two families), dynamic hyper- and frac-connections
NAMES = ["eca_resnet18", "eca_mobilenetv2", "resnet18_gcp", "vit_tiny_patch16_gcp",
         "resnet50_dhc2", "mobilenetv2_fc2"]
BATCH = {"x": {0: Dim("batch", min=1, max=64)}}


def _model(name):
    torch.manual_seed(0)
    kwargs = small_kwargs(name)
    if "hc2" in name or "fc2" in name:
        kwargs["hc_nan_guard"] = True  # a check of values: left out of the exported program
    model = cvkit.create_model(name, **kwargs).eval()
    with torch.no_grad():  # trained-looking BN statistics, so the outputs are not all alike
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name", NAMES)
def test_torch_export_with_a_dynamic_batch(name):
    model = _model(name)
    program = torch.export.export(model, (small_input(name, batch=3),), dynamic_shapes=BATCH)
    x = small_input(name, batch=5)
    out = program.module()(x)  # as a user calls it: gradients enabled
    with torch.no_grad():
        torch.testing.assert_close(out.detach(), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["eca_resnet18", "resnet18_gcp", "vit_tiny_patch16_gcp"])
def test_onnx_export_runs_in_onnxruntime(name, tmp_path):
    import onnxruntime

    model = _model(name)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (small_input(name, batch=3),), str(path), dynamo=True,
                      dynamic_shapes=BATCH)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = small_input(name, batch=5)
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["eca_resnet18", "resnet18_gcp", "vit_tiny_patch16_gcp",
                                  "resnet50_dhc2"])
def test_torchscript_trace_saves_and_loads(name, tmp_path):
    """``torch.jit.trace`` (older serving stacks): the traced module saves and loads and computes
    what the eager model does. (An ECA model refused to trace: an in-place autograd function; a
    GCP model traced into a Python op that ``torch.jit.save`` refuses.)"""
    model = _model(name)
    x = small_input(name, batch=3)
    with torch.no_grad():
        traced = torch.jit.trace(model, (x,), check_trace=False)
    torch.jit.save(traced, str(tmp_path / "traced.pt"))
    loaded = torch.jit.load(str(tmp_path / "traced.pt"))
    x = small_input(name, batch=5)  # the trace takes other batch sizes
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)
