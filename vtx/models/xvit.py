"""XViT: space-time mixing video transformer (Bulat et al., NeurIPS 2021).

An image ViT runs on every frame (frames batched as B*T, frame index fastest) with a learned
temporal embedding added to every token and, in the blocks listed in `mixing_layers`, keys and
values shifted across neighbouring frames (`space_time_mixing.py`). The per-frame [CLS] outputs go
through a small temporal transformer head. Official quirks reproduced by default:
  - `temp_embed` has `temporal_embedding_size` = 8 entries indexed by (flattened image index mod 8),
    even for 16 frames (set it to the clip length for one entry per frame);
  - shift groups have `num_segments` frames, so K400/K600 clips of 16 are mixed as two halves;
  - the position grid is stored for `pos_embed_image_size` = 224 and, for any other `image_size`,
    resized in every forward pass with PyTorch's bicubic kernel (A = -0.75, scale = size / 224);
  - the head uses LayerNorm eps 1e-5 and a bias-free qkv, the backbone eps 1e-6 with qkv bias.
"""
import functools
import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vtx.errors import VtxError
from vtx.models import layers
from vtx.models.space_time_mixing import SpaceTimeMixingAttention


def _cubic_weights(t: float, a: float = -0.75) -> np.ndarray:
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.array([far(t + 1), near(t), near(1 - t), far(2 - t)])


def torch_bicubic_matrix(in_size: int, scale_factor: float) -> np.ndarray:
    """[out, in] matrix of `F.interpolate(mode='bicubic', scale_factor=s, align_corners=False)`
    along one axis: half-pixel centres measured with 1/s, 4 taps clamped at the borders."""
    out_size = math.floor(in_size * scale_factor)
    m = np.zeros((out_size, in_size))
    for o in range(out_size):
        real = (o + 0.5) / scale_factor - 0.5
        index = min(math.floor(real), in_size - 1)
        t = min(max(real - index, 0.0), 1.0)
        for tap, w in zip(range(index - 1, index + 3), _cubic_weights(t)):
            m[o, min(max(tap, 0), in_size - 1)] += w
    return m


class Block(nn.Module):
    """Pre-norm transformer block."""
    attention: Any          # partial of SpaceTimeMixingAttention, missing only `name`
    mlp: Any                # partial of layers.Mlp, missing only `name`
    norm: Any               # partial of layers.layer_norm, missing only `name`

    @nn.compact
    def __call__(self, x, deterministic: bool = True, drop_path=None):
        y = self.norm(name='norm1')(x)
        y = self.attention(name='attn')(y, deterministic)
        x = x + layers.drop_path(y, drop_path, 0)
        y = self.norm(name='norm2')(x)
        y = self.mlp(name='mlp')(y, deterministic)
        x = x + layers.drop_path(y, drop_path, 1)
        return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class TemporalHead(nn.Module):
    """The official `VitHead`: a temporal [CLS] token, transformer blocks over time (no temporal
    position embedding), then LN -> Linear -> GELU -> Dropout -> Linear on that token."""
    num_classes: int
    num_layers: int = 1
    num_heads: int = 12
    mlp_dim: int = 768
    dropout_rate: float = 0.5
    layer_norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        batch, _, dim = x.shape
        cls = self.param('cls_token', nn.with_logical_partitioning(
            nn.initializers.zeros, (None, None, 'embed')), (1, 1, dim))
        x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, dim)).astype(x.dtype), x], axis=1)
        norm = functools.partial(layers.layer_norm, self.layer_norm_eps, dtype=self.dtype)
        block = functools.partial(
            Block, norm=norm,
            attention=functools.partial(SpaceTimeMixingAttention, num_heads=self.num_heads,
                                        qkv_bias=False, dtype=self.dtype),
            # The head blocks have the official fixed mlp_ratio 4.
            mlp=functools.partial(layers.Mlp, hidden_dim=4 * dim, dtype=self.dtype))
        for i in range(self.num_layers):
            x = block(name=f'blocks_{i}')(x, deterministic)
        y = norm(name='mlp_head_norm')(x[:, 0])
        y = layers.dense(self.mlp_dim, ('embed', 'mlp'), dtype=self.dtype, name='mlp_head_fc1')(y)
        y = layers.gelu(y)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        return layers.dense(self.num_classes, ('mlp', 'classes'), dtype=self.dtype,
                            name='mlp_head_fc2')(y)


class XViT(nn.Module):
    """Input [B, T, H, W, 3] with H = W = image_size, output logits [B, num_classes]."""
    num_classes: int
    image_size: int = 224
    patch_size: int = 16
    hidden_size: int = 768
    mlp_dim: int = 3072
    num_heads: int = 12
    num_layers: int = 12
    num_segments: int = 8             # shift group length (official XVIT.NUM_SEGMENTS)
    shift_div: int = 8                # fold = hidden_size // shift_div channels each way
    mixing_layers: Optional[Sequence[int]] = None  # blocks with mixing (LOCATIONS_LIST); None: all
    temporal_embedding_size: int = 8
    pos_embed_image_size: int = 224
    head_num_layers: int = 1
    head_num_heads: int = 12
    head_mlp_dim: int = 768
    dropout_rate: float = 0.5         # in the temporal head's MLP
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    layer_norm_eps: float = 1e-6
    head_layer_norm_eps: float = 1e-5
    remat: bool = False
    dtype: Any = jnp.float32
    # Fast paths that change how, not what, the model computes (docs/performance.md).
    # kernels.attention.ATTENTION_IMPLEMENTATIONS (backbone only)
    attention_implementation: str = 'auto'
    fused_qkv: bool = False
    scan_layers: bool = False

    def _check(self, video):
        if video.ndim != 5 or video.shape[2:4] != (self.image_size, self.image_size):
            raise VtxError(f'XViT expects [B, T, {self.image_size}, {self.image_size}, 3] video, '
                             f'got shape {tuple(video.shape)}')
        batch, frames = video.shape[:2]
        if frames % self.num_segments:
            raise VtxError(f'XViT: {frames} frames per clip is not a multiple of '
                             f'model.num_segments={self.num_segments}')
        if (batch * frames) % self.temporal_embedding_size:
            raise VtxError(f'XViT: batch*frames={batch * frames} is not a multiple of '
                             f'model.temporal_embedding_size={self.temporal_embedding_size} (the '
                             'official model fails here too)')

    def _position_embedding(self, pos):
        """The stored 224-grid table, resized to this image size as the official forward does."""
        if self.image_size == self.pos_embed_image_size:
            return pos
        grid = self.pos_embed_image_size // self.patch_size
        # The official ratio divides both sizes by 16 whatever the patch size: it is size / 224.
        scale = (self.image_size / 16) / (self.pos_embed_image_size / 16)
        m = jnp.asarray(torch_bicubic_matrix(grid, scale), jnp.float32)
        table = pos[0, 1:].reshape(grid, grid, -1)
        table = jnp.einsum('oh,pw,hwd->opd', m, m, table.astype(jnp.float32),
                           precision='highest').astype(pos.dtype)
        return jnp.concatenate([pos[:, :1], table.reshape(1, -1, pos.shape[-1])], axis=1)

    @nn.compact
    def __call__(self, video, train: bool = False, return_features: bool = False):
        self._check(video)
        batch, frames = video.shape[:2]
        d = self.hidden_size
        x = video.reshape(batch * frames, *video.shape[2:]).astype(self.dtype)
        x = layers.PatchEmbed(embed_dim=d, patch_size=(self.patch_size,) * 2, dtype=self.dtype,
                              name='patch_embed')(x)
        grid = self.pos_embed_image_size // self.patch_size
        pos = self.param('pos_embed', nn.with_logical_partitioning(
            layers.truncated_normal(0.02), (None, 'length', 'embed')), (1, 1 + grid * grid, d))
        pos = self._position_embedding(pos)
        if x.shape[1] * x.shape[2] + 1 != pos.shape[1]:
            raise VtxError(f'XViT: patch grid {x.shape[1:3]} does not match the '
                             f'{pos.shape[1] - 1} position entries for image_size='
                             f'{self.image_size}, patch_size={self.patch_size}')
        x = x.reshape(x.shape[0], -1, d)
        cls = self.param('cls_token', nn.with_logical_partitioning(
            layers.truncated_normal(0.02), (None, None, 'embed')), (1, 1, d))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, d)).astype(x.dtype), x], axis=1)
        x = x + pos.astype(x.dtype)
        temp = self.param('temp_embed', nn.with_logical_partitioning(
            nn.initializers.zeros, (None, None, None, 'embed')),
            (1, self.temporal_embedding_size, 1, d))
        # Image i = b*T + t gets entry i mod temporal_embedding_size (the official view).
        x = (x.reshape(-1, self.temporal_embedding_size, *x.shape[1:]) + temp.astype(x.dtype)
             ).reshape(x.shape)
        x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))

        mixing = set(range(self.num_layers) if self.mixing_layers is None else self.mixing_layers)
        norm = functools.partial(layers.layer_norm, self.layer_norm_eps, dtype=self.dtype)
        # One partial of each kind for all layers: `apply_layers` scans runs of equal arguments.
        attention = functools.partial(
            SpaceTimeMixingAttention, num_heads=self.num_heads,
            attention_dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
            implementation=self.attention_implementation, fused_qkv=self.fused_qkv)
        mixing_attention = functools.partial(attention, mix=True, num_segments=self.num_segments,
                                             shift_div=self.shift_div)
        mlp = functools.partial(layers.Mlp, hidden_dim=self.mlp_dim, dtype=self.dtype)
        layer_args = [dict(attention=mixing_attention if i in mixing else attention, mlp=mlp,
                           norm=norm) for i in range(self.num_layers)]
        x = layers.apply_layers(
            self, Block, layer_args, x, not train, name='blocks',
            drop_path_rates=np.linspace(0, self.drop_path_rate, self.num_layers).tolist(),
            remat=self.remat, scan=self.scan_layers)
        x = norm(name='norm')(x)
        features = x[:, 0].reshape(batch, frames, d)
        logits = TemporalHead(num_classes=self.num_classes, num_layers=self.head_num_layers,
                              num_heads=self.head_num_heads, mlp_dim=self.head_mlp_dim,
                              dropout_rate=self.dropout_rate,
                              layer_norm_eps=self.head_layer_norm_eps, dtype=self.dtype,
                              name='temporal_head')(features, not train)
        logits = logits.astype(jnp.float32)
        return (logits, features) if return_features else logits
