"""MaskedLinear's data-dependent fast paths: CPU sparse inference in eval mode, block-sparse kernels for
block-structured masks. Both must give the masked op's result and follow mask changes."""

import pytest
import torch

from lth_kernels.nn import MaskedLinear
from lth_kernels.nn import masked as masked_mod
from lth_kernels.ops import cpu_sparse

from ..conftest import require_live


@pytest.fixture
def cpu_kernel():
    require_live("cpu_sparse_linear", "cpu", "cpu")


def _oracle(layer, x):
    w = (layer.weight.double() * layer.mask)
    return x.double() @ w.t() + layer.bias.double()


def test_eval_uses_cpu_sparse_above_crossover_and_follows_the_mask(monkeypatch, cpu_kernel):
    layer = MaskedLinear(768, 3072)
    layer.set_mask(torch.rand(3072, 768) > 0.97)
    x = torch.randn(8, 768)
    layer.eval()
    monkeypatch.setattr(cpu_sparse, "use_sparse_cpu", lambda *a, **k: True)  # the table is machine specific
    calls = []
    real = cpu_sparse.eval_forward
    monkeypatch.setattr(cpu_sparse, "eval_forward", lambda lay, inp: calls.append(1) or real(lay, inp))
    with torch.no_grad():
        y = layer(x)
        assert calls, "eval mode above the crossover must take the CPU sparse path"
        torch.testing.assert_close(y.double(), _oracle(layer, x), atol=1e-4, rtol=1e-4)
        layer.set_mask(torch.rand(3072, 768) > 0.99)
        torch.testing.assert_close(layer(x).double(), _oracle(layer, x), atol=1e-4, rtol=1e-4)
        # Below the crossover: the dense F.linear of the masked weight (no CSR built).
        monkeypatch.setattr(cpu_sparse, "use_sparse_cpu", lambda *a, **k: False)
        dense_layer = MaskedLinear(64, 48).eval()
        dense_layer.set_mask(torch.rand(48, 64) > 0.5)
        torch.testing.assert_close(dense_layer(x[:, :64]).double(), _oracle(dense_layer, x[:, :64]), atol=1e-4,
                                   rtol=1e-4)
        assert "_cpu_sparse_weight" not in dense_layer.__dict__
    layer.train()
    calls.clear()
    layer(x).sum().backward()
    assert not calls, "training mode must run the masked op (masked weight gradient)"


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_eval_pointwise_conv_uses_cpu_sparse(monkeypatch, stride, channels_last, cpu_kernel):
    from lth_kernels.nn import MaskedConv2d

    layer = MaskedConv2d(37, 29, 1, stride=stride).eval()
    layer.set_mask(torch.rand(29, 37, 1, 1) > 0.8)
    x = torch.randn(3, 37, 9, 11)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(cpu_sparse, "use_sparse_cpu", lambda *a, **k: True)
    calls = []
    real = cpu_sparse.eval_forward
    monkeypatch.setattr(cpu_sparse, "eval_forward", lambda lay, inp: calls.append(1) or real(lay, inp))
    with torch.no_grad():
        y = layer(x)
        want = torch.nn.functional.conv2d(x.double(), (layer.weight * layer.mask).double(), layer.bias.double(),
                                          stride)
        assert calls and y.shape == want.shape
        torch.testing.assert_close(y.double(), want, atol=1e-4, rtol=1e-4)
        assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        layer.set_mask(torch.zeros(29, 37, 1, 1, dtype=torch.bool))  # all pruned: the bias everywhere
        torch.testing.assert_close(layer(x), layer.bias.view(1, -1, 1, 1).expand_as(y))
        # Not a GEMM (3x3, groups, padding): the dense conv of the masked weight, never the kernel.
        for conv in (MaskedConv2d(37, 29, 3), MaskedConv2d(37, 37, 1, groups=37),
                     MaskedConv2d(37, 29, 1, padding=1, padding_mode="reflect")):
            conv.set_mask(torch.rand(conv.weight.shape) > 0.5).eval()
            torch.testing.assert_close(conv(x), conv.to_dense()(x))
            assert "_cpu_sparse_weight" not in conv.__dict__
    calls.clear()
    layer.train()(x)
    assert not calls  # training: the masked op (masked weight gradient)


def test_block_structured_mask_routes_to_block_sparse(monkeypatch):
    monkeypatch.setattr(masked_mod, "BLOCK_SPARSE_DEVICES", ("cpu",))
    torch.manual_seed(1)
    layer = MaskedLinear(96, 70)
    block_map = torch.rand(3, 3) > 0.6
    block_map[0, 0] = True
    mask = block_map.repeat_interleave(32, 0).repeat_interleave(32, 1)[:70, :96]
    layer.set_mask(mask)
    calls = []
    real = masked_mod.block_sparse_linear
    monkeypatch.setattr(masked_mod, "block_sparse_linear", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(5, 96, dtype=torch.float32, requires_grad=True)
    y = layer(x)
    assert calls, "a sparse block-structured mask must take the block-sparse kernel"
    torch.testing.assert_close(y.double(), _oracle(layer, x.detach()), atol=1e-4, rtol=1e-4)
    y.sum().backward()
    assert torch.all(layer.weight.grad[~layer.mask] == 0)
    # an unstructured mask of the same layer goes back to the masked op
    calls.clear()
    layer.set_mask(torch.rand(70, 96) > 0.8)
    layer(x)
    assert not calls


def test_dense_or_unstructured_masks_never_take_the_block_path(monkeypatch):
    monkeypatch.setattr(masked_mod, "BLOCK_SPARSE_DEVICES", ("cpu",))
    layer = MaskedLinear(64, 64)
    assert layer._block_layout(torch.device("cpu")) is None  # full mask: density 1 > the cut-off
    layer.set_mask(torch.rand(64, 64) > 0.9)
    assert layer._block_layout(torch.device("cpu")) is None


def test_two_four_mask_runs_on_the_sparse_tensor_cores_only_without_gradients(monkeypatch):
    from lth_kernels.ops import mask_2to4, semi_structured

    layer = MaskedLinear(64, 32)
    layer.set_mask(mask_2to4(layer.weight))
    x = torch.randn(4, 64)
    assert not semi_structured.sparse_applies(x, layer.weight, layer.mask, layer.bias)  # needs CUDA fp16/bf16
    assert not layer._semi_structured_applies(x)
    # As on a GPU where the one-time timing found 2:4 faster: the layer must use it, in inference only.
    monkeypatch.setattr(masked_mod, "SEMI_STRUCTURED_DEVICES", ("cpu",))
    monkeypatch.setattr(semi_structured, "sparse_applies", lambda *a: True)
    calls = []

    def spy(x, weight, mask, bias, backend):
        calls.append(backend)
        return semi_structured.semi_structured_linear(x, weight, mask, bias, backend="reference")

    monkeypatch.setattr(masked_mod, "semi_structured_linear", spy)
    with torch.no_grad():
        y = layer(x)
    assert calls == ["cusparselt"]
    torch.testing.assert_close(y.double(), _oracle(layer, x), atol=1e-4, rtol=1e-4)
    layer(x).sum().backward()  # training: the masked op (masked dW), never the 2:4 forward
    assert calls == ["cusparselt"]
    assert torch.all(layer.weight.grad[~layer.mask] == 0)
