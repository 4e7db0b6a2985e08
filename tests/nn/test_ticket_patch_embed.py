"""TicketPatchEmbed: kept-patch embedding equals "embed all patches, add positions, gather" (float64)."""

import pytest
import timm
import torch

from lth_kernels.nn.ticket_patch_embed import TicketPatchEmbed


def _index(b, n, k):
    return torch.stack([torch.randperm(n)[:k] for _ in range(b)])


def _dense_then_gather(model, images, keep):
    tok = model._pos_embed(model.patch_embed(images))  # (B, 1 + N, D): cls + patches, positions added
    b = images.shape[0]
    return torch.cat([tok[:, :1], tok[:, 1:][torch.arange(b)[:, None], keep.long()]], 1)


@pytest.mark.parametrize("k", [1, 7, 16])
@pytest.mark.parametrize("no_embed_class", [False, True])
def test_from_timm_matches_dense_then_gather(k, no_embed_class):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
                              no_embed_class=no_embed_class).double()
    with torch.no_grad():
        model.cls_token.normal_()
    emb = TicketPatchEmbed.from_timm(model.patch_embed, model.pos_embed, model.cls_token,
                                     no_embed_class=no_embed_class)
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    keep = _index(3, 16, k).to(torch.int32)
    out = emb(images, keep)
    assert out.shape == (3, k + 1, 192)
    torch.testing.assert_close(out, _dense_then_gather(model, images, keep), atol=1e-12, rtol=1e-12)


def test_backward_to_weight_bias_pos_and_cls():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=24, patch_size=8, depth=1).double()
    emb = TicketPatchEmbed.from_timm(model.patch_embed, model.pos_embed, model.cls_token)
    images = torch.randn(2, 3, 24, 24, dtype=torch.float64)
    keep = _index(2, 9, 5)
    grad = torch.randn(2, 6, 192, dtype=torch.float64)
    got = torch.autograd.grad((emb(images, keep) * grad).sum(),
                              (emb.proj.weight, emb.proj.bias, emb.pos_embed, emb.cls_token))
    params = (model.patch_embed.proj.weight, model.patch_embed.proj.bias, model.pos_embed, model.cls_token)
    want = torch.autograd.grad((_dense_then_gather(model, images, keep) * grad).sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)
    # dropped patches' position embeddings get exactly zero gradient
    dropped = torch.ones(9, dtype=torch.bool)
    dropped[keep.flatten()] = False
    assert torch.all(got[2][0, 1:][dropped] == 0)


def test_all_patches_by_default_and_non_contiguous_images():
    emb = TicketPatchEmbed(img_size=16, patch_size=4, in_chans=2, embed_dim=8)
    images = torch.randn(2, 16, 16, 2).permute(0, 3, 1, 2)  # channels-last view
    out = emb(images)
    conv = emb.proj(images.contiguous()).flatten(2).transpose(1, 2) + emb.pos_embed[:, 1:]
    torch.testing.assert_close(out[:, 1:], conv, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, 0], (emb.cls_token + emb.pos_embed[:, :1])[:, 0].expand(2, -1))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda e: e(torch.randn(2, 3, 16, 16), torch.tensor([[0, 0], [1, 2]])), "keep_index: indices of a row"),
        (lambda e: e(torch.randn(2, 3, 16, 16), torch.tensor([[0, 16], [1, 2]])), r"keep_index: values must lie"),
        (lambda e: e(torch.randn(2, 3, 16, 16), torch.tensor([[0.5]] * 2)), "keep_index: expected an int32/int64"),
        (lambda e: e(torch.randn(2, 3, 20, 16), None), r"images: expected \(B, 3, 16, 16\)"),
    ],
)
def test_bad_input(call, match):
    emb = TicketPatchEmbed(img_size=16, patch_size=4, in_chans=3, embed_dim=8)
    with pytest.raises(ValueError, match=match):
        call(emb)
