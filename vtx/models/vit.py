"""The video-ViT baseline and TokShift (Zhang et al., ACM MM 2021).

A 2D ViT runs on every frame (frames batched as B*T, frame index fastest); the head is applied
to each frame's [CLS] token and the logits are averaged over frames. With `temporal='token_shift'`
the [CLS] token is shifted across frames before both sub-blocks of every encoder block.
Module names follow the official checkpoint (`transformer.encoder.layer.{i}.attn.query`, ...).
"""
import functools
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vtx.errors import VtxError
from vtx.models import layers
from vtx.models.token_shift import TokenShift


class EncoderBlock(nn.Module):
    """Pre-norm encoder block; `token_shift` (a TokenShift partial, missing only `name`) shifts
    the [CLS] token before both sub-blocks (TokShift)."""
    attention: Any          # partial of layers.SelfAttention, missing only `name`
    mlp: Any                # partial of layers.Mlp, missing only `name`
    norm: Any               # partial of layers.layer_norm, missing only `name`
    token_shift: Optional[Any] = None
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, deterministic: bool = True, drop_path=None):
        shift = self.token_shift() if self.token_shift is not None else (lambda y: y)
        x = shift(x)  # the shifted stream is also the residual, as in the official code
        y = self.norm(name='attention_norm')(x)
        y = self.attention(name='attn')(y, deterministic)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        x = x + layers.drop_path(y, drop_path, 0)
        x = shift(x)
        y = self.norm(name='ffn_norm')(x)
        y = self.mlp(name='ffn')(y, deterministic)
        x = x + layers.drop_path(y, drop_path, 1)
        return nn.with_logical_constraint(x, ('batch', 'length', 'embed'))


class VideoViT(nn.Module):
    """Input [B, T, H, W, 3] (T must equal num_frames), output logits [B, num_classes]."""
    num_classes: int
    num_frames: int
    image_size: int = 224
    patch_size: int = 16
    hidden_size: int = 768
    mlp_dim: int = 3072
    num_heads: int = 12
    num_layers: int = 12
    temporal: str = 'none'  # 'none' (video-ViT baseline) or 'token_shift' (TokShift)
    shift_div: int = 4
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    layer_norm_eps: float = 1e-6
    head_zero_init: bool = True
    remat: bool = False
    dtype: Any = jnp.float32
    # Fast paths that change how, not what, the model computes (docs/performance.md).
    attention_implementation: str = 'auto'
    fused_qkv: bool = False
    scan_layers: bool = False

    def check_input(self, video):
        if self.temporal not in ('none', 'token_shift'):
            raise VtxError(f"config.model.temporal must be 'none' or 'token_shift', got {self.temporal!r}")
        if video.ndim != 5 or video.shape[1] != self.num_frames:
            raise VtxError(f'VideoViT expects [B, {self.num_frames}, H, W, 3] video, got shape '
                             f'{tuple(video.shape)}')
        grid = video.shape[2] // self.patch_size, video.shape[3] // self.patch_size
        expected = self.image_size // self.patch_size
        if grid != (expected, expected):
            raise VtxError(f'VideoViT built for image_size={self.image_size} (grid {expected}x'
                             f'{expected}) got frames of {video.shape[2]}x{video.shape[3]}')

    @nn.compact
    def __call__(self, video, train: bool = False, return_features: bool = False):
        self.check_input(video)
        batch, frames = video.shape[:2]
        x = video.reshape(batch * frames, *video.shape[2:]).astype(self.dtype)
        x = layers.PatchEmbed(embed_dim=self.hidden_size, patch_size=(self.patch_size,) * 2,
                              dtype=self.dtype, name='patch_embed')(x)
        x = x.reshape(x.shape[0], -1, self.hidden_size)
        cls = self.param('cls_token', nn.with_logical_partitioning(
            nn.initializers.zeros, (None, None, 'embed')), (1, 1, self.hidden_size))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.hidden_size)).astype(x.dtype),
                             x], axis=1)
        pos = self.param('pos_embedding', nn.with_logical_partitioning(
            layers.truncated_normal(0.02), (None, 'length', 'embed')), (1, x.shape[1], self.hidden_size))
        x = x + pos.astype(x.dtype)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))

        norm = functools.partial(layers.layer_norm, self.layer_norm_eps, dtype=self.dtype)
        # One partial of each kind for all layers: `apply_layers` scans runs of equal arguments.
        block = dict(
            attention=functools.partial(
                layers.SelfAttention, num_heads=self.num_heads,
                attention_dropout_rate=self.attention_dropout_rate, dtype=self.dtype,
                implementation=self.attention_implementation, fused_qkv=self.fused_qkv),
            mlp=functools.partial(layers.Mlp, hidden_dim=self.mlp_dim,
                                  dropout_rate=self.dropout_rate, dtype=self.dtype),
            norm=norm, dropout_rate=self.dropout_rate,
            token_shift=(functools.partial(TokenShift, num_frames=self.num_frames,
                                           shift_div=self.shift_div)
                         if self.temporal == 'token_shift' else None))
        x = layers.apply_layers(
            self, EncoderBlock, [block] * self.num_layers, x, not train, name='layer',
            drop_path_rates=np.linspace(0, self.drop_path_rate, self.num_layers).tolist(),
            remat=self.remat, scan=self.scan_layers)
        x = norm(name='encoder_norm')(x)
        features = x[:, 0].reshape(batch, frames, self.hidden_size)
        head_init = nn.initializers.zeros if self.head_zero_init else layers.default_kernel_init
        logits = layers.dense(self.num_classes, ('embed', 'classes'), dtype=self.dtype,
                              kernel_init=head_init, name='head')(features)
        logits = logits.astype(jnp.float32).mean(axis=1)  # per-frame head, averaged over T
        return (logits, features) if return_features else logits
