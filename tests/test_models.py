"""Tests of the segmentation networks in segloop.core.networks (CPU, tiny widths)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segloop.core.networks import available, build, register
from segloop.core.networks._blocks import LayerNormCF, crop, max_pool, pad_to_multiple
from segloop.core.networks.convnext_unet import ConvNeXtBlock
from segloop.core.networks.segunet import UnpoolBlock, switch_mask, unpool
from segloop.errors import UnknownArchitectureError

ARCHS = ["convnext_unet", "segunet", "unet", "unet26"]
CONVS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def tiny(name: str, in_ch: int = 2, out_ch: int = 3, **kw) -> nn.Module:
    """A small network: base width 4, depth 2 (unet26: its fixed depth 4)."""
    kw.setdefault("base_width", 4)
    if name != "unet26":
        kw.setdefault("depth", 2)
    if name == "convnext_unet":
        kw.setdefault("blocks_per_stage", 1)
    return build(name, in_ch, out_ch, **kw)


def n_convs(model: nn.Module) -> int:
    return sum(isinstance(m, CONVS) for m in model.modules())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_registry_lists_all_architectures():
    assert available() == sorted(available())
    assert set(ARCHS) <= set(available())


def test_unknown_architecture_raises_with_known_names():
    with pytest.raises(UnknownArchitectureError, match="unet26"):
        build("no_such_net", 1, 2)


def test_register_refuses_a_second_constructor_under_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        register("unet")(lambda *a, **k: None)


@pytest.mark.parametrize("name", ARCHS)
def test_contract_attributes(name):
    net = tiny(name, 2, 3)
    assert (net.in_channels, net.out_channels, net.dims) == (2, 3, 2)
    assert net.divisor == (16 if name == "unet26" else 4)
    assert net.has_dropout is False
    assert tiny(name, dropout=0.2).has_dropout is True
    assert any(isinstance(m, nn.Dropout) for m in tiny(name, dropout=0.2).modules())
    assert tiny(name, dims=3).dims == 3


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("dims", [4, 1, 0])
def test_bad_dims_raise_value_error(name, dims):
    with pytest.raises(ValueError, match="dims"):
        tiny(name, dims=dims)


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("shape", [(37, 53), (16, 16), (64, 48), (5, 3), (1, 1), (2, 31)])
def test_shapes_2d(name, shape):
    net = tiny(name).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 2, *shape))
    assert y.shape == (2, 3, *shape)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("shape", [(9, 20, 17), (3, 5, 2), (8, 16, 16)])
def test_shapes_3d(name, shape):
    net = tiny(name, 1, 2, dims=3).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 1, *shape))
    assert y.shape == (1, 2, *shape)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ARCHS)
def test_train_mode_backward(name):
    net = tiny(name, dropout=0.1).train()
    x = torch.randn(2, 2, 19, 22)
    y = net(x)
    assert y.shape == (2, 3, 19, 22)
    y.square().mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ARCHS)
def test_wrong_input_rank_or_channels_raise(name):
    net = tiny(name, 2, 3).eval()
    with pytest.raises(ValueError):
        net(torch.randn(2, 16, 16))
    with pytest.raises(ValueError):
        net(torch.randn(1, 5, 16, 16))


@pytest.mark.parametrize("name", ARCHS)
def test_channels_last_matches_contiguous(name):
    net = tiny(name).eval()
    x = torch.randn(2, 2, 32, 20)
    with torch.no_grad():
        ref = net(x)
        net_cl = net.to(memory_format=torch.channels_last)
        out = net_cl(x.to(memory_format=torch.channels_last))
        odd = net_cl(torch.randn(1, 2, 37, 53).to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert odd.shape == (1, 3, 37, 53)


@pytest.mark.parametrize("norm", ["batch", "instance", "group", "layer", "none"])
@pytest.mark.parametrize("name", ["unet", "segunet"])
def test_norm_options(name, norm):
    net = tiny(name, norm=norm).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 2, 12, 9)).shape == (1, 3, 12, 9)
    with pytest.raises(ValueError, match="norm"):
        tiny(name, norm="weird")


def test_padding_is_skipped_for_multiples_and_cropped_back():
    x = torch.randn(1, 1, 32, 48)
    assert pad_to_multiple(x, 16) == (x, None)
    x = torch.arange(35.0).reshape(1, 1, 5, 7)
    padded, window = pad_to_multiple(x, 8)
    assert padded.shape == (1, 1, 8, 8)
    assert torch.equal(crop(padded, window), x)
    tiny_x = torch.randn(1, 1, 2, 3, 1)  # pads larger than the axes: replicate
    padded, window = pad_to_multiple(tiny_x, 8)
    assert padded.shape == (1, 1, 8, 8, 8)
    assert torch.equal(crop(padded, window), tiny_x)


# --- unet26 ----------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("upsample", ["transpose", "nearest"])
def test_unet26_has_exactly_26_conv_layers(dims, upsample):
    net = build("unet26", 3, 3, dims=dims, base_width=4, upsample=upsample)
    assert n_convs(net) == 26
    assert net.divisor == 16


def test_unet_conv_count_formula():
    for depth, convs in [(4, 2), (3, 3), (2, 1)]:
        net = build("unet", 1, 2, depth=depth, convs_per_level=convs, base_width=4)
        assert n_convs(net) == convs * (2 * depth + 1) + depth + 1


def test_unet26_preset_keywords():
    net = build("unet26", 1, 2, dims=3, base_width=4, norm="group", dropout=0.3, depth=4)
    assert net.dims == 3 and net.has_dropout and n_convs(net) == 26
    with pytest.raises(ValueError, match="unet26"):
        build("unet26", 1, 2, depth=3)
    with pytest.raises(ValueError, match="unet26"):
        build("unet26", 1, 2, convs_per_level=2)


# --- segunet switch mask ----------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_switch_unpool_equals_max_unpool_with_indices(dims):
    shape = (2, 3) + (6,) * dims
    x = torch.randn(shape)  # continuous values: no ties
    pool, unpool_ref = ((F.max_pool2d, F.max_unpool2d), (F.max_pool3d, F.max_unpool3d))[dims - 2]
    pooled, idx = pool(x, 2, return_indices=True)
    y = torch.randn_like(pooled)
    mask = switch_mask(x, max_pool(x))
    assert mask.dtype == x.dtype
    assert mask.sum() == pooled.numel()  # exactly one switch per window
    torch.testing.assert_close(unpool(y, mask), unpool_ref(y, idx, 2, output_size=x.shape))


def test_segunet_decoder_unpools_through_the_switch_mask():
    net = build("segunet", 1, 2, base_width=4, depth=2, norm="none").eval()
    seen = []

    def hook(block, args, _out):
        y, skip, mask = args
        cat_in = torch.cat([unpool(block.reduce(y), mask), skip], 1)
        seen.append((skip, mask, cat_in))

    for block in net.decoder:
        assert isinstance(block, UnpoolBlock)
        block.register_forward_hook(hook)
    captured = []
    for block in net.decoder:
        block.conv.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    with torch.no_grad():
        net(torch.randn(1, 1, 16, 16))
    assert len(seen) == len(captured) == 2
    for (skip, mask, expected), actual in zip(seen, captured, strict=True):
        c = skip.shape[1]
        unpooled = actual[:, :c]
        torch.testing.assert_close(actual, expected)
        torch.testing.assert_close(mask, (skip == F.interpolate(
            F.max_pool2d(skip, 2), scale_factor=2.0, mode="nearest")).float())
        assert (unpooled[mask == 0] == 0).all()  # zero off the max locations
        assert (mask == 0).any()
        torch.testing.assert_close(actual[:, c:], skip)


# --- convnext ----------------------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_convnext_blocks_have_the_convnext_parts(dims):
    net = tiny("convnext_unet", dims=dims, layer_scale_init=1e-6)
    blocks = [m for m in net.modules() if isinstance(m, ConvNeXtBlock)]
    assert len(blocks) == 3
    for b in blocks:
        c = b.dwconv.in_channels
        assert b.dwconv.kernel_size == (7,) * dims and b.dwconv.groups == c == b.dwconv.out_channels
        assert isinstance(b.norm, LayerNormCF)
        assert isinstance(b.act, nn.GELU)
        assert b.pwconv1.out_channels == 4 * c and b.pwconv2.out_channels == c
        assert isinstance(b.gamma, nn.Parameter) and b.gamma.shape == (c,)
        torch.testing.assert_close(b.gamma.detach(), torch.full((c,), 1e-6))
    assert tiny("convnext_unet", blocks_per_stage=(1, 2, 3)).stages[2].__len__() == 3
    with pytest.raises(ValueError, match="blocks_per_stage"):
        tiny("convnext_unet", blocks_per_stage=(1, 2))


def test_convnext_block_is_near_identity_at_init_and_layernorm_over_channels():
    block = ConvNeXtBlock(8, dims=2, layer_scale_init=1e-6)
    x = torch.randn(2, 8, 9, 9)
    torch.testing.assert_close(block(x), x, atol=1e-4, rtol=0)
    ln = LayerNormCF(8)
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (8,), eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), ref)


# --- ONNX ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ARCHS)
def test_onnx_round_trip_2d(name):
    ort = pytest.importorskip("onnxruntime")
    net = build(name, 3, 3, base_width=8, **({} if name == "unet26" else {"depth": 2}))
    for m in net.modules():  # non-trivial normalisation statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()
    h, w = 2 * net.divisor, 3 * net.divisor
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.randn(1, 3, h, w), buf, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, h, w)  # batch differs from the export: dynamic axis
    out = sess.run(["logits"], {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = net(x).numpy()
    assert out.shape == ref.shape == (2, 3, h, w)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
