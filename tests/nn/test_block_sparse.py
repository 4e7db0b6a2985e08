"""BlockSparseLinear: the masked-layer contract (state_dict, set_mask, mask_version), layout caching, and
pruned weights staying exactly zero through SGD with momentum and weight decay."""

import copy

import pytest
import torch
from torch import nn

from lth_kernels.nn.block_sparse import BlockSparseLinear
from lth_kernels.ops.block_sparse import expand_block_map

from ..conftest import assert_close, require_live

BACKENDS = ["reference", "triton"]


def _bmap(out_f, in_f, block, density=0.5):
    return torch.rand(-(-out_f // block[0]), -(-in_f // block[1])) < density


def test_state_dict_is_the_dense_layers():
    layer = BlockSparseLinear(40, 24, block=(16, 16), mask=_bmap(24, 40, (16, 16)))
    dense = nn.Linear(40, 24)
    assert layer.state_dict().keys() == dense.state_dict().keys()
    dense.load_state_dict(layer.state_dict())
    x = torch.randn(3, 40)
    assert_close(layer(x), dense(x), torch.float32)  # the stored weight already has its zeros
    layer.load_state_dict(nn.Linear(40, 24).state_dict())  # and loads from a dense one
    assert "mask" in dict(layer.named_buffers())


def test_set_mask_zeroes_weight_bumps_version_and_checks_structure():
    layer = BlockSparseLinear(40, 24, block=(16, 16))
    assert layer.mask_version == 0 and layer.mask.all()
    bmap = _bmap(24, 40, (16, 16))
    layer.set_mask(bmap)
    emask = expand_block_map(bmap, (24, 40), (16, 16))
    assert layer.mask_version == 1 and torch.equal(layer.mask, emask)
    assert torch.all(layer.weight[~emask] == 0)
    layer.set_mask(emask)  # an element mask made of whole blocks is fine too
    assert layer.mask_version == 2
    with pytest.raises(ValueError, match="mask: not a union of whole"):
        layer.set_mask(torch.rand(24, 40) > 0.5)
    with pytest.raises(ValueError, match="block_mask_or_layout: shape"):
        layer.set_mask(torch.ones(5, 5, dtype=torch.bool))


def test_layout_is_cached_until_the_mask_changes():
    layer = BlockSparseLinear(64, 64, block=(32, 32), mask=_bmap(64, 64, (32, 32)))
    a = layer.layout()
    assert layer.layout() is a
    layer.set_mask(_bmap(64, 64, (32, 32), 0.9))
    b = layer.layout()
    assert b is not a and torch.equal(b.element_mask(), layer.mask)
    layer.mask[:32, :32] = False  # edited in place, without set_mask
    c = layer.layout()
    assert c is not b and not c.block_map()[0, 0]


def test_from_linear_shares_parameters_and_deepcopies():
    lin = nn.Linear(48, 32)
    bmap = _bmap(32, 48, (16, 16))
    layer = BlockSparseLinear.from_linear(lin, bmap, block=(16, 16))
    assert layer.weight is lin.weight and layer.bias is lin.bias
    x = torch.randn(5, 48)
    ref = x @ (lin.weight * expand_block_map(bmap, (32, 48), (16, 16))).t() + lin.bias
    assert_close(layer(x), ref, torch.float32)
    clone = copy.deepcopy(layer)
    assert_close(clone(x), layer(x), torch.float32)
    assert "block=(16, 16)" in repr(layer)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pruned_weights_stay_zero_with_sgd_momentum_wd(backend):
    require_live("block_sparse_linear", backend, "cpu")
    torch.manual_seed(1)
    layer = BlockSparseLinear(50, 70, block=(32, 16), mask=_bmap(70, 50, (32, 16), 0.4), backend=backend)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    before = layer.weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(8, 50)).square().mean().backward()
        opt.step()
    assert torch.all(layer.weight[~layer.mask] == 0)
    assert not torch.equal(layer.weight[layer.mask], before[layer.mask])  # the kept ones did train
    # a pruning event: new mask; the optimizer state of the newly pruned weights is the trainer's to reset
    layer.set_mask(_bmap(70, 50, (32, 16), 0.2))
    opt.state.clear()
    for _ in range(2):
        opt.zero_grad()
        layer(torch.randn(8, 50)).square().mean().backward()
        opt.step()
    assert torch.all(layer.weight[~layer.mask] == 0)


@pytest.mark.gpu
def test_gpu_compiled_training_step_bf16():
    layer = BlockSparseLinear(768, 3072, block=(64, 64), mask=_bmap(3072, 768, (64, 64), 0.3), device="cuda",
                              dtype=torch.bfloat16)
    layer.layout()  # built outside the graph
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    step = torch.compile(lambda x: layer(x).float().square().mean(), fullgraph=True)
    for _ in range(3):
        opt.zero_grad()
        step(torch.randn(512, 768, device="cuda", dtype=torch.bfloat16)).backward()
        opt.step()
    assert torch.all(layer.weight[~layer.mask] == 0)
