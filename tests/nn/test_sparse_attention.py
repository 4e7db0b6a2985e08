"""SparseAttention and ticketize_vit against timm's own modules (float64)."""

import copy

import pytest
import timm
import torch

from lth_kernels.nn.sparse_attention import SparseAttention, ticketize_vit
from lth_kernels.ops.sparse_attention import local_window_block_mask

from ..conftest import assert_within_torch_error


def _index(b, n, k):
    return torch.stack([torch.randperm(n)[:k] for _ in range(b)])


def _model(name="deit_tiny_patch16_224"):
    return timm.create_model(name, pretrained=False, img_size=32, patch_size=8, depth=2).double().eval()


def test_sparse_attention_loads_timm_state_dict_and_matches():
    attn = _model().blocks[0].attn
    ours = SparseAttention(192, num_heads=3, qkv_bias=True).double()
    ours.load_state_dict(attn.state_dict())
    x = torch.randn(2, 17, 192, dtype=torch.float64)
    torch.testing.assert_close(ours(x), attn(x))
    shared = SparseAttention.from_timm(attn)
    assert shared.state_dict().keys() == attn.state_dict().keys()
    keep = _index(2, 17, 9)
    kept_x = x[torch.arange(2)[:, None], keep]
    torch.testing.assert_close(shared(x, keep), attn(kept_x))
    full = shared(x, keep, compact=False)
    torch.testing.assert_close(full[torch.arange(2)[:, None], keep], attn(kept_x))
    assert full.abs().sum() == full[torch.arange(2)[:, None], keep].abs().sum()


def test_sparse_attention_block_mask_and_varlen_modes():
    attn = SparseAttention.from_timm(_model().blocks[0].attn, backend="reference")
    x = torch.randn(2, 33, 192, dtype=torch.float64)
    bm = local_window_block_mask(33, 3, block=16)
    q, k, v = attn._qkv(x)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bm.mask)
    torch.testing.assert_close(attn(x, block_mask=bm), attn._out(want.transpose(1, 2).reshape(2, 33, 192)))
    packed = torch.cat([x[0, :20], x[1, :13]])
    cu = torch.tensor([0, 20, 33], dtype=torch.int32)
    out = attn(packed, cu_seqlens=cu, max_seqlen=20)
    torch.testing.assert_close(out[:20], attn(x[:1, :20])[0])
    torch.testing.assert_close(out[20:], attn(x[1:, :13])[0])


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "vit_tiny_patch16_224"])
def test_ticketize_vit_keep_all_equals_dense(name):
    dense = _model(name)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    want = dense(images)
    keys = dense.state_dict().keys()
    model = ticketize_vit(copy.deepcopy(dense))
    assert model.state_dict().keys() == keys
    torch.testing.assert_close(model(images), want)
    torch.testing.assert_close(model(images, torch.arange(16).expand(2, 16)), want)
    dense.load_state_dict(model.state_dict())  # checkpoints move both ways


@pytest.mark.parametrize("k", [1, 9])
def test_ticketize_vit_matches_drop_tokens_then_run(k):
    dense = _model()
    model = ticketize_vit(copy.deepcopy(dense)).train()
    dense.train()
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    keep = _index(3, 16, k).to(torch.int32)
    out = model(images, keep)
    tok = dense._pos_embed(dense.patch_embed(images))
    kept = torch.cat([tok[:, :1], tok[:, 1:][torch.arange(3)[:, None], keep.long()]], 1)
    want = dense.forward_head(dense.norm(dense.blocks(kept)))
    torch.testing.assert_close(out, want)
    g = torch.autograd.grad(out.sum(), list(model.parameters()))
    gw = torch.autograd.grad(want.sum(), list(dense.parameters()))
    for a, b in zip(g, gw):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
def test_gpu_ticket_deit_small_bf16_compiled():
    dense = timm.create_model("deit_small_patch16_224", pretrained=False).cuda().to(torch.bfloat16).eval()
    model = ticketize_vit(copy.deepcopy(dense))
    images = torch.randn(32, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    keep = torch.stack([torch.randperm(196, device="cuda")[:137] for _ in range(32)]).int()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(images, keep)

    @torch.no_grad()
    def gathered(vit, dtype):  # the dense ViT on the kept tokens, by timm's own modules in ``dtype``
        tok = vit._pos_embed(vit.patch_embed(images.to(dtype)))
        kept = torch.cat([tok[:, :1], tok[:, 1:][torch.arange(32, device="cuda")[:, None], keep.long()]], 1)
        return vit.forward_head(vit.norm(vit.blocks(kept)))

    want, own = gathered(copy.deepcopy(dense).double(), torch.float64), gathered(dense, torch.bfloat16)
    assert_within_torch_error(out.detach(), want, own, msg="logits")
