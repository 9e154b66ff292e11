"""Preparing a model for inference: eval mode, channels_last, BatchNorm folded into convolutions.

On a CPU, inference of a convolutional network is bound by memory traffic more than by
arithmetic: on the 2-core AVX512-BF16 machine this was written on, a BatchNorm over a bf16
activation costs as much as copying it, and efficientnet_lite0 spent as long in its 49
BatchNorms as in its convolutions. An eval-mode BatchNorm is an affine map per channel, so it can
be folded into the convolution before it (``w' = w * s``, ``b' = (b - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)``), exactly in fp32. Under bf16 autocast, folding into *depthwise*
convolutions loses precision (their folded 3x3/5x5 kernels round badly: mean feature cosine to
fp32 drops from 0.9981 to 0.9975), so in bf16 only dense convolutions are folded, which keeps
the cosine where eager bf16 has it. Measured for efficientnet_lite0 at 224 px, batch 16: 172 ->
224 img/s.

Conv/BN pairs are found as consecutive children of a module (``conv_pw``/``bn1`` in timm,
``conv1``/``bn1`` in torchvision); since a module's child order does not prove data flow, the
folded model is checked against the original in fp32 on a fixed input and discarded if it
differs. The BatchNorm's activation (timm's ``BatchNormAct2d``) is kept.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

CHECK_COSINE = 0.9999


class _Activation(nn.Module):
    """What remains of a folded ``BatchNormAct2d``: its dropout and activation (identity for plain BN)."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.drop = getattr(bn, "drop", None) or nn.Identity()
        self.act = getattr(bn, "act", None) or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _foldable(conv: nn.Module, bn: nn.Module, depthwise: bool) -> bool:
    return (
        type(conv) is nn.Conv2d  # not a subclass with its own forward (e.g. timm's Conv2dSame padding)
        and isinstance(bn, nn.BatchNorm2d)
        and bn.track_running_stats and bn.running_mean is not None
        and bn.num_features == conv.out_channels
        and (depthwise or conv.groups == 1)
    )


def _folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    with torch.no_grad():
        scale = bn.running_var.double().add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        bias = (bias - bn.running_mean.double()) * scale
        if bn.bias is not None:
            bias = bias + bn.bias.double()
        out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                        conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                        device=conv.weight.device, dtype=conv.weight.dtype)
        out.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
        out.bias.copy_(bias)
    return out


def fold_batchnorm(model: nn.Module, *, depthwise: bool = True) -> int:
    """Fold every eval-mode BatchNorm that directly follows a convolution into it, in place.

    ``depthwise=False`` leaves grouped convolutions unfolded (for bf16, see the module notes).
    Returns the number of folded pairs. Only correct in eval mode; check the result
    (:func:`prepare_for_inference` does).
    """
    n = 0
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if _foldable(conv, bn, depthwise):
                setattr(parent, conv_name, _folded_conv(conv, bn))
                setattr(parent, bn_name, _Activation(bn))
                n += 1
    return n


def prepare_for_inference(
    model: nn.Module,
    device: torch.device,
    dtype: torch.dtype | None,
    *,
    input_size: tuple[int, int, int] | None = None,
    fuse: bool = True,
) -> nn.Module:
    """A copy of ``model`` on ``device`` in eval mode and channels_last, with BatchNorm folded.

    Args:
        model: any image model; it is not modified.
        device: where inference will run.
        dtype: the autocast dtype inference will use (``None``: fp32); decides whether depthwise
            convolutions are folded too.
        input_size: ``(C, H, W)`` for the fp32 check of the folded model (default ``(3, 64, 64)``).
        fuse: ``False`` skips folding.

    Example:
        >>> fast = prepare_for_inference(bb.model, torch.device("cpu"), torch.bfloat16)
        >>> with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ...     feats = fast(x.contiguous(memory_format=torch.channels_last))
    """
    original = model.to(device).eval()
    out = copy.deepcopy(original)
    if fuse:
        n = fold_batchnorm(out, depthwise=dtype is None)
        if n and not _same_function(original, out, device, input_size or (3, 64, 64)):
            log.info("BatchNorm folding changed the model's output; running it unfolded")
            out = copy.deepcopy(original)
        elif n:
            log.info("folded %d BatchNorm layers into the convolutions before them", n)
    return out.to(memory_format=torch.channels_last)


def _same_function(a: nn.Module, b: nn.Module, device: torch.device, input_size: tuple[int, int, int]) -> bool:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, *input_size), generator=gen).to(device)
    try:
        with torch.inference_mode():
            ya, yb = a(x).float().flatten(1), b(x).float().flatten(1)
    except Exception as e:  # a model whose forward relies on the BatchNorm module itself
        log.info("BatchNorm folding broke the forward pass (%s)", type(e).__name__)
        return False
    if ya.shape != yb.shape or not bool(torch.isfinite(yb).all()):
        return False
    return bool(torch.nn.functional.cosine_similarity(ya, yb, dim=1).min() >= CHECK_COSINE)
