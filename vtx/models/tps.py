"""TPS: a 2D Swin with Temporal Patch Shift (Xiang et al., ECCV 2022, "Spatiotemporal
Self-attention Modeling with Temporal Patch Shift for Action Recognition").

Every frame is windowed into 7x7 spatial windows (window (1, 7, 7)); before the qkv projection
even blocks shift channels per head to the neighbouring frames (TSM) and odd (shifted-window)
blocks apply the temporal patch shift, which is undone on attn @ v before the output projection.
The relative position bias table is built for a virtual (16, 7, 7) window and indexed per frame
(official quirk), so the official model only works with exactly 16 frame tokens.
"""
import math

import numpy as np

from vtx.errors import VtxError
from vtx.models import patch_shift
from vtx.models.video_swin import SwinBackbone, WindowAttention

FRAME_TOKENS = 16   # the bias index is built for 16 frames; nothing else runs officially
WINDOW = (1, 7, 7)


def bias_index(shifted: bool) -> np.ndarray:
    """[16, N, N] table rows for a query in frame t and a key (always taken at frame 0).

    Plain blocks use temporal offset t; patch-shifted blocks use the source frames the tokens hold
    after the shift, the key's at frame 0 even for t > 0 (official quirk).
    """
    _, wh, ww = WINDOW
    rows, cols = np.meshgrid(np.arange(wh), np.arange(ww), indexing='ij')
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    spatial = ((rows[:, None] - rows[None, :] + wh - 1) * (2 * ww - 1)
               + cols[:, None] - cols[None, :] + ww - 1)
    if shifted:
        held = patch_shift.source_frames(FRAME_TOKENS, (wh, ww))
        temporal = held[:, :, None] - held[0][None, None, :]
    else:
        temporal = np.arange(FRAME_TOKENS)[:, None, None]
    return (temporal + FRAME_TOKENS - 1) * (2 * wh - 1) * (2 * ww - 1) + spatial


class TPSWindowAttention(WindowAttention):
    """Window attention with TSM ('channel_shift') or the temporal patch shift ('patch_shift')."""
    temporal: str = 'channel_shift'

    def table_rows(self) -> int:
        return (2 * FRAME_TOKENS - 1) * math.prod(2 * w - 1 for w in WINDOW[1:])

    def position_index(self, win) -> np.ndarray:
        return bias_index(self.temporal == 'patch_shift')   # per frame, all windows

    def mix_input(self, x):
        if self.temporal == 'patch_shift':
            return patch_shift.temporal_patch_shift(x)
        return patch_shift.channel_shift(x, self.num_heads)

    def mix_output(self, o):
        if self.temporal == 'patch_shift':
            return patch_shift.temporal_patch_shift(o, inverse=True)
        return o


class TPS(SwinBackbone):
    """Input [B, T, H, W, 3] with ceil(T / patch_size[0]) == 16 and every stage >= 7x7 tokens."""
    num_frames: int = 32   # clip length; construction refuses lengths the official model cannot run
    drop_path_rate: float = 0.1

    window_size = WINDOW

    def __post_init__(self):
        tokens = -(-self.num_frames // self.patch_size[0])
        if tokens != FRAME_TOKENS:
            raise VtxError(
                f'TPS: model.num_frames={self.num_frames} with temporal patch {self.patch_size[0]} '
                f'gives {tokens} frame tokens; the temporal patch shift and its position-bias '
                f'index are defined for exactly {FRAME_TOKENS} (e.g. 32 frames with patch_size '
                '(2, 4, 4))')
        super().__post_init__()

    def attention_for_block(self, stage: int, block: int):
        return self.attention_partial(
            TPSWindowAttention, stage, temporal='patch_shift' if block % 2 else 'channel_shift')

    def check_input(self, video):
        super().check_input(video)
        _, t, h, w, _ = video.shape
        pt, ph, pw = self.patch_size
        if -(-t // pt) != FRAME_TOKENS:
            raise VtxError(f'TPS expects clips of {self.num_frames} frames ({FRAME_TOKENS} frame '
                             f'tokens), got {t} frames')
        h, w = -(-h // ph), -(-w // pw)
        for stage in range(len(self.depths)):
            if min(h, w) < WINDOW[1]:
                raise VtxError(f'TPS: stage {stage} would have {h}x{w} tokens; every stage '
                                 f'needs at least 7x7 (frames of {video.shape[2]}x'
                                 f'{video.shape[3]} are too small for this patch size and depth)')
            h, w = -(-h // 2), -(-w // 2)
