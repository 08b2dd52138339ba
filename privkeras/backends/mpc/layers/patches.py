"""Folding sliding-window patches back into images (col2im), on ring tensors.

`fold_patches` is the adjoint of `RingKernels.extract_patches`: where windows
overlap, their entries are summed. It is linear over Z_2^64, so a secure
layer applies it to every share with `SharedTensor.map_linear`; the backward
passes of Conv2D and of the pooling layers use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from privkeras.core.kernels import RingKernels, conv_output_padding

__all__ = ["fold_patches"]


def fold_patches(
    kernels: RingKernels,
    patches: Any,
    image_shape: Sequence[int],
    kernel_size: Sequence[int],
    strides: Sequence[int],
    padding: str,
) -> Any:
    """Sums `(N, OH, OW, KH * KW, C)` patches back into an `(N, H, W, C)` image.

    Args:
        kernels: Ring kernels of the tensors' library.
        patches: Ring tensor of patches, laid out as `extract_patches` makes them.
        image_shape: `(N, H, W, C)` of the image the patches were taken from.
        kernel_size: `(KH, KW)`.
        strides: `(SH, SW)`.
        padding: `"VALID"` or `"SAME"`.

    Returns:
        The `(N, H, W, C)` ring tensor `x` with `<extract_patches(y), patches> =
        <y, x>` for every `y`.
    """
    n, h, w, c = (int(s) for s in image_shape)
    kh, kw = kernel_size
    sh, sw = strides
    oh, top, bottom = conv_output_padding(h, kh, sh, padding)
    ow, left, right = conv_output_padding(w, kw, sw, padding)
    hp, wp = h + top + bottom, w + left + right
    total = None
    for i in range(kh):
        for j in range(kw):
            window = kernels.getitem(patches, (slice(None), slice(None), slice(None), i * kw + j))
            if sh > 1 or sw > 1:
                # Spread the window to stride spacing: entry t lands at row t * stride.
                window = kernels.reshape(window, (n, oh, 1, ow, 1, c))
                window = kernels.pad(
                    window, [(0, 0), (0, 0), (0, sh - 1), (0, 0), (0, sw - 1), (0, 0)]
                )
                window = kernels.reshape(window, (n, oh * sh, ow * sw, c))
            rows, cols = min(oh * sh, hp - i), min(ow * sw, wp - j)
            window = kernels.getitem(window, (slice(None), slice(0, rows), slice(0, cols)))
            window = kernels.pad(window, [(0, 0), (i, hp - i - rows), (j, wp - j - cols), (0, 0)])
            total = window if total is None else kernels.add(total, window)
    return kernels.getitem(total, (slice(None), slice(top, top + h), slice(left, left + w)))
