"""cvkit.layers.autocast.autocast_off: the layers' float32 islands under AMP."""
import torch

from cvkit.layers.autocast import autocast_off
from cvkit.layers.hyper_connections import HyperConnections


def test_turns_autocast_off_and_skips_the_meta_device():
    x = torch.randn(2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (x @ x.T).dtype == torch.bfloat16
        with autocast_off(x.device):
            assert (x @ x.T).dtype == torch.float32
    with autocast_off(torch.device("meta")):  # torch.autocast("meta") would raise
        assert torch.ones(2, device="meta").shape == (2,)


def test_compiles_whole_without_asking_whether_autocast_is_available(monkeypatch):
    """PyTorch 2.11's Dynamo cannot trace torch.amp.is_autocast_available (a graph break, an error
    under fullgraph=True: the GCP head's CUDA compile test on a GPU machine, run 10). Here the
    check is made untraceable on purpose (compiler.disable: a graph break on any version), and a
    layer that opens autocast_off still compiles whole and keeps its float32 island."""
    real = torch.amp.is_autocast_available
    monkeypatch.setattr(torch.amp, "is_autocast_available",
                        torch.compiler.disable(lambda device_type: real(device_type)))
    torch.manual_seed(0)
    hc = HyperConnections(8, 2, layer_index=1, dynamic=True)
    streams = torch.randn(2, 2, 5, 8)  # (B, rate, tokens, dim)
    branch = torch.nn.Linear(8, 8)
    torch._dynamo.reset()
    compiled = torch.compile(lambda s: hc(s, branch), fullgraph=True, backend="eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = compiled(streams), hc(streams, branch)
    assert out.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(out, ref)
