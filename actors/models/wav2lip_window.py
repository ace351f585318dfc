"""Wav2Lip decoding only the part of the face crop that the paste-back reads (the mouth window).

The paste (``actors/compose.py::composite``) blends the generated 96x96 crop into the frame through
a lower-face ellipse that is exactly 0 over the upper half and near the sides: for any box size it
reads only the crop pixels in :func:`actors.compose.paste_source_window` (rows 45..94, columns
16..80 of 96, about a third of the crop). The decoder's high-resolution stages are most of the
network's work (3.3 of its 4.0 GMAC per frame are decoder convolutions at 24 to 96 px), and a
convolution's output over a window depends only on its input over that window grown by the
kernel's reach. So :class:`Wav2LipWindowed` runs the face and audio encoders whole, then each
decoder stage only over the window its consumers need (computed backwards from the output window
by :func:`decoder_windows`), slicing the encoder's skip features to match. The result over the
window is the same sums of the same products as the full network's (checked against it in
``tests/unit/models/test_wav2lip_window.py``); about 28 % of the multiply-adds are skipped.

Same weights, same state-dict layout: it wraps a :class:`~actors.models.wav2lip.Wav2Lip`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from actors.compose import paste_source_window
from actors.models.wav2lip import Wav2Lip
from actors.models.wav2lip_spec import CROP

Interval = tuple[int, int]  # [lo, hi) along one axis
Window = tuple[int, int, int, int]  # (row_lo, row_hi, col_lo, col_hi) in crop pixels

# What the default paste reads of a 96x96 crop (rows 45..94, columns 16..80).
MOUTH_WINDOW: Window = paste_source_window(96)
# Spatial size of each decoder stage's output (after the join with the encoder feature), deepest first.
DECODER_SIZES = (1, 3, 6, 12, 24, 48, 96)


def _grow(iv: Interval, k: int, n: int) -> Interval:
    return max(0, iv[0] - k), min(n, iv[1] + k)


def _upconv_source(iv: Interval, n_in: int) -> Interval:
    """Inputs of a 3x3, stride-2, padding-1 transposed conv that reach outputs ``iv``: output ``o``
    takes input ``i`` through tap ``o + 1 - 2i`` in 0..2, i.e. ``ceil((o-1)/2) <= i <= floor((o+1)/2)``."""
    return max(0, -((1 - iv[0]) // 2)), min(n_in, iv[1] // 2 + 1)


def decoder_windows(window: Window) -> list[tuple[Interval, Interval]]:
    """(rows, cols) each decoder stage must produce, deepest first, for ``window`` of the 96x96 output.

    Backwards from the output: the output block's 3x3 conv needs the window grown by 1; a stride-2
    stage's two residual 3x3 convs grow it by 2 more, and its transposed conv needs
    :func:`_upconv_source` of that from the stage before. The two deepest stages (a 1x1 conv and a
    stride-1 transposed conv, 1 and 3 px) are always whole.
    """
    r0, r1, c0, c1 = window
    if not (0 <= r0 < r1 <= CROP and 0 <= c0 < c1 <= CROP):
        raise ValueError(f"window {window} is not inside the {CROP}x{CROP} crop")
    rows, cols = _grow((r0, r1), 1, CROP), _grow((c0, c1), 1, CROP)
    out: list[tuple[Interval, Interval]] = []
    for k in range(len(DECODER_SIZES) - 1, -1, -1):
        size = DECODER_SIZES[k]
        out.append(((0, size), (0, size)) if k < 2 else (rows, cols))
        if k >= 2:
            prev = DECODER_SIZES[k - 1]
            rows = _upconv_source(_grow(rows, 2, size), prev)
            cols = _upconv_source(_grow(cols, 2, size), prev)
    return out[::-1]


def _conv3x3(block: nn.Module, x: torch.Tensor, have: tuple[Interval, Interval],
             want: tuple[Interval, Interval], n: int) -> torch.Tensor:
    """A ConvBN 3x3/stride-1/padding-1 block (``block.conv_block`` = Conv2d, BatchNorm2d; residual
    or not) over window ``want``, from ``x`` holding window ``have`` of an ``n x n`` map. Zero
    padding is added only where ``want`` touches the map's true border, as the full conv pads."""
    conv, bn = block.conv_block[0], block.conv_block[1]
    (hr, hc), (wr, wc) = have, want
    src_r = (max(0, wr[0] - 1), min(n, wr[1] + 1))
    src_c = (max(0, wc[0] - 1), min(n, wc[1] + 1))
    xs = x[:, :, src_r[0] - hr[0]:src_r[1] - hr[0], src_c[0] - hc[0]:src_c[1] - hc[0]]
    pad = (int(wc[0] == 0), int(wc[1] == n), int(wr[0] == 0), int(wr[1] == n))  # left, right, top, bottom
    if any(pad):
        xs = F.pad(xs, pad)
    y = bn(F.conv2d(xs, conv.weight, conv.bias))
    if block.residual:
        y = y + x[:, :, wr[0] - hr[0]:wr[1] - hr[0], wc[0] - hc[0]:wc[1] - hc[0]]
    return block.act(y)


def _upconv(block: nn.Module, x: torch.Tensor, have: tuple[Interval, Interval],
            want: tuple[Interval, Interval]) -> torch.Tensor:
    """An UpConvBN 3x3/stride-2/padding-1 block over output window ``want`` from ``x`` holding input
    window ``have``. Without padding the transposed conv of inputs ``[i0, i1)`` covers outputs
    ``[2*i0 - 1, 2*i1)``, every output in ``want`` with all the contributions it gets in the full map."""
    ct, bn = block.conv_block[0], block.conv_block[1]
    (hr, hc), (wr, wc) = have, want
    y = F.conv_transpose2d(x, ct.weight, ct.bias, stride=2)
    r_off, c_off = wr[0] - (2 * hr[0] - 1), wc[0] - (2 * hc[0] - 1)
    y = y[:, :, r_off:r_off + wr[1] - wr[0], c_off:c_off + wc[1] - wc[0]]
    return block.act(bn(y))


def _window_slice(t: torch.Tensor, w: tuple[Interval, Interval]) -> torch.Tensor:
    (r0, r1), (c0, c1) = w
    return t[:, :, r0:r1, c0:c1]


class Wav2LipWindowed(nn.Module):
    """``forward(mel, face) -> [B,3,r1-r0,c1-c0]``: the full network's output over ``window``.

    Inputs as :class:`~actors.models.wav2lip.Wav2Lip`. ``window = (r0, r1, c0, c1)`` in 96x96 crop
    pixels; the stages' windows come from :func:`decoder_windows`.
    """

    def __init__(self, model: Wav2Lip, window: Sequence[int]):
        super().__init__()
        self.model = model
        self.window: Window = tuple(int(v) for v in window)  # type: ignore[assignment]
        self.stage_windows = decoder_windows(self.window)

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        m = self.model
        skips = []
        x = face
        for stage in m.face_encoder_blocks:
            x = stage(x)
            skips.append(x)
        x = m.audio_encoder(mel)
        have = ((0, 1), (0, 1))
        for k, stage in enumerate(m.face_decoder_blocks):
            size, want = DECODER_SIZES[k], self.stage_windows[k]
            skip = skips.pop()
            if want == ((0, size), (0, size)):  # a whole map: the plain stage
                x = torch.cat((stage(x), skip), dim=1)
            else:
                up, *residuals = stage
                # Each residual conv shrinks the window by 1 (except at the map's border).
                grown = [(_grow(want[0], j, size), _grow(want[1], j, size)) for j in range(len(residuals), -1, -1)]
                x = _upconv(up, x, have, grown[0])
                for j, block in enumerate(residuals):
                    x = _conv3x3(block, x, grown[j], grown[j + 1], size)
                x = torch.cat((x, _window_slice(skip, want)), dim=1)
            have = want
        r0, r1, c0, c1 = self.window
        head, proj, sigmoid = m.output_block
        x = _conv3x3(head, x, have, ((r0, r1), (c0, c1)), CROP)
        return sigmoid(proj(x))
