"""The differentiable core of the fused stages as ONE autograd node: warp, composite, recolour, paste.

In a fused step only the patch carries a gradient, yet written as tensor ops the chain from the patch to
the image (colour the patch, add its alpha, resample, composite over the scene window, colour the window,
add noise, clamp, paste into the scene) is a dozen autograd nodes, each saving its inputs and each
dispatched again in the backward pass. :func:`composite_window` runs the same ops, in the same order and
on the same values, inside one :class:`torch.autograd.Function` whose backward computes only what the
patch needs: the window's gradient gathered from the image's, the clamps' masks, the transposed colour
matrices and one ``grid_sampler_2d_backward`` for the patch channels (the alpha channel's gradient is
never used). Forward and gradient are bit for bit those of the op-by-op chain
(``tests/attack/test_window_composite.py`` checks both against it).

Example:
    >>> import torch
    >>> from pandemonium.attack.stages.geometry import window_grid
    >>> patch = torch.rand(2, 3, 4, 4, requires_grad=True)
    >>> to_patch = torch.eye(3).repeat(2, 1, 1)  # the patch covers the window's top-left 4 x 4 pixels
    >>> grid = window_grid(to_patch, torch.zeros(2, 2, dtype=torch.long), (8, 8), (4, 4), True)
    >>> scene = torch.rand(2, 3, 8, 8)
    >>> out, coverage = composite_window(patch, None, grid, scene, scene, None)
    >>> out.shape, coverage.shape
    (torch.Size([2, 3, 8, 8]), torch.Size([2, 1, 8, 8]))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["composite_window", "apply_colour_matrix"]


def apply_colour_matrix(images: Tensor, matrix: Tensor, offset: Tensor) -> Tensor:
    """``M v + beta`` for every pixel ``v`` of ``images`` ``(B, C, H, W)`` (one batched matmul)."""
    b, c, h, w = images.shape
    args = (offset.to(images.dtype).unsqueeze(-1), matrix.to(images.dtype), images.reshape(b, c, h * w))
    if torch.is_grad_enabled() and any(t.requires_grad for t in (images, matrix, offset)):
        return torch.baddbmm(*args).view(b, c, h, w)
    # without autograd, written into a tensor of its own (not a view), which a later step may modify in place
    out = images.new_empty(b, c, h, w)
    torch.baddbmm(*args, out=out.view(b, c, h * w))
    return out


def _in_unit(values: Tensor) -> Tensor:
    # where clamp(0, 1) passes the gradient: autograd's clamp_backward uses these bounds, both inclusive
    return (values >= 0.0).logical_and_(values <= 1.0)


class _WindowComposite(torch.autograd.Function):
    """See :func:`composite_window`; positional arguments in its order."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, patch: Tensor, alpha: Tensor | None, grid: Tensor, scene: Tensor, background: Tensor,
        index: Tensor | None, pre_matrix: Tensor | None, pre_offset: Tensor | None, post_matrix: Tensor | None,
        post_offset: Tensor | None, post_noise: Tensor | None, sink: list[Tensor],
    ) -> Tensor:
        b, c, h, w = patch.shape
        source = patch
        pre_in = post_in = None
        if pre_matrix is not None:
            pre_in = apply_colour_matrix(source, pre_matrix, pre_offset)
            source = pre_in.clamp(0.0, 1.0)
        if alpha is None:
            stacked = torch.cat([source, source.new_ones(b, 1, h, w)], dim=1)
        else:
            stacked = torch.cat([source * alpha, alpha], dim=1)
        warped = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        coverage = warped[:, c:]
        out = torch.addcmul(warped[:, :c], scene, 1.0 - coverage)
        if post_matrix is not None:
            post_in = apply_colour_matrix(out, post_matrix, post_offset)
            if post_noise is not None:
                post_in = post_in + post_noise
            out = post_in.clamp(0.0, 1.0)
        if index is not None:  # in place: the background is the caller's fresh, gradient-free tensor
            background.view(b, c, -1).scatter_(2, index, out.reshape(b, c, -1))
            ctx.mark_dirty(background)
            out = background
        # the coverage carries no gradient; autograd allows one output when an input (a view) is modified
        # in place, so it leaves through ``sink``
        sink.append(coverage)
        ctx.window = (grid.shape[1], grid.shape[2])
        ctx.save_for_backward(stacked, alpha, grid, index, pre_matrix, pre_in, post_matrix, post_in)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor | None) -> tuple[Tensor | None, ...]:
        nones = (None,) * 11
        if grad_out is None or not ctx.needs_input_grad[0]:
            return (None, *nones)
        stacked, alpha, grid, index, pre_matrix, pre_in, post_matrix, post_in = ctx.saved_tensors
        b, c1, h, w = stacked.shape
        c, (wh, ww) = c1 - 1, ctx.window
        zero = grad_out.new_zeros(())
        # each step is the backward formula autograd applies to the op-by-op chain, in reverse order
        g = grad_out
        if index is not None:  # scatter's source gradient
            g = g.reshape(b, c, -1).gather(2, index)
        if post_matrix is not None:
            g = torch.where(_in_unit(post_in), g.reshape(b, c, wh, ww), zero)
            g = post_matrix.to(g.dtype).transpose(1, 2).bmm(g.reshape(b, c, wh * ww))
        g = g.reshape(b, c, wh, ww).contiguous()
        # the composite's gradient reaches the premultiplied patch channels unchanged; the alpha channel
        # (coverage) is detached, so only the patch channels are resampled back
        g = torch.ops.aten.grid_sampler_2d_backward(g, stacked[:, :c], grid, 0, 0, False, [True, False])[0]
        if alpha is not None:
            g = g * alpha
        if pre_matrix is not None:
            g = torch.where(_in_unit(pre_in), g, zero)
            g = pre_matrix.to(g.dtype).transpose(1, 2).bmm(g.reshape(b, c, h * w)).view(b, c, h, w)
        return (g, *nones)


def composite_window(
    patch: Tensor,
    alpha: Tensor | None,
    grid: Tensor,
    scene: Tensor,
    background: Tensor,
    index: Tensor | None,
    pre: tuple[Tensor, Tensor] | None = None,
    post: tuple[Tensor, Tensor] | None = None,
    post_noise: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The image with each sample's finished window pasted in, and the window's coverage ``(B, 1, h, w)``.

    ``patch`` ``(B, C, ph, pw)`` (the only input with a gradient) is recoloured by ``pre`` (matrix
    ``(B, C, C)``, offset ``(B, C)``) and clamped to [0, 1], multiplied by ``alpha`` (``(B, 1, ph, pw)`` or
    ``None``: opaque), resampled with ``grid`` ``(B, h, w, 2)`` and composited (premultiplied) over
    ``scene`` ``(B, C, h, w)``; the window is then recoloured by ``post``, ``post_noise`` ``(B, C, h, w)``
    is added and it is clamped to [0, 1]. ``index`` (:func:`~pandemonium.attack.stages.windows.window_index`)
    pastes it into ``background`` ``(B, C, H, W)``, IN PLACE (pass a tensor of your own, contiguous and
    without gradient: one full-image copy fewer per step); ``None``: the window is the whole image.
    """
    pre_matrix, pre_offset = pre if pre is not None else (None, None)
    post_matrix, post_offset = post if post is not None else (None, None)
    sink: list[Tensor] = []
    out = _WindowComposite.apply(
        patch, alpha, grid, scene, background, index, pre_matrix, pre_offset, post_matrix, post_offset, post_noise,
        sink,
    )
    return out, sink[0]
