"""What a video model used for its prediction, drawn: `model.explain(videos)` or
`vtx-predict --explain OUT_DIR`.

Each video is explained on the first view of the config's test protocol (the frames the model
saw, normalisation undone), with the top-k classes of that view and an overlay [T, H, W] in [0, 1]
of what the model used, by family:

- STTS (MViT with `time_pruning_loc`/`space_pruning_loc`, Video Swin with `time_left_ratio`):
  exactly the selectors' hard top-k output (the indices they sow into 'intermediates'), 1 where
  a token was kept, 0 where it was dropped. A temporal selector keeps patch frames (each covers
  `num_frames / patch frames` input frames); MViT's spatial selector keeps one window of tokens
  per kept frame (each token covers its cell of the frame).
- ViT family (video-ViT, TokShift, XViT): attention rollout (Abnar & Zuidema, ACL 2020) from the
  class token(s) the logits are read from: per block the head-averaged attention W becomes
  (W + I) / 2 (the residual), rows sum to 1, and the blocks are multiplied through. Frames meet
  outside attention in these models, so rollout follows them there too, as a frame-mixing matrix
  C whose row t says where the channels a token of frame t holds after the shift came from:
  a fraction fold / D from t + 1, as much from t - 1, the rest from t (zero-filled borders
  removed, rows normalised). TokShift shifts only the [CLS] token, before attention and before
  the MLP, so C acts on the [CLS] entries; XViT's space-time mixing shifts keys and values, so
  attending to token j of frame t reads the values of token j at frames t - 1, t, t + 1 in
  proportion C[t]: the block's attention is W (x) C. Rollout starts from the [CLS] of every frame
  with weight 1 / T (TokShift/ViT average the per-frame logits), and for XViT from the frame
  tokens in the proportions the temporal head's own rollout gives them (its [CLS] token, a
  learned constant, is left out).
- Video Swin, TPS and plain MViT: Grad-CAM (Selvaraju et al., ICCV 2017) of the predicted class
  on the last stage's tokens -- Swin: the final norm's output, which the head pools; MViT: the
  input of the last block (the class token is read from it through that block's attention) --
  channel weights = the gradient averaged over the tokens, map = ReLU(weighted channel sum),
  upsampled trilinearly to the frames.
"""
import dataclasses
import math
import os
import textwrap
import weakref
from typing import Dict, List, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vtx.errors import VtxError
from vtx.models import build_model
from vtx.models.token_selection import (SpatialWindowSelection, TemporalSelection,
                                        window_token_indices)

SELECTION, ROLLOUT, GRAD_CAM = 'token selection', 'attention rollout', 'grad-cam'
FRAMES_PER_ROW = 8


@dataclasses.dataclass
class Explanation:
    """One video's explanation: `frames` uint8 [T, H, W, 3] (the first view), `overlay` float32
    [T, H, W] in [0, 1], `top_k` as `predict` reports it (of this view), `method` and `caption`;
    for STTS, `selected`: what each selector sowed ({name: {'scores', 'indices'}}, batch row 0)."""
    video: str
    frames: np.ndarray
    overlay: np.ndarray
    method: str
    top_k: List[Dict]
    caption: str
    selected: Optional[Dict[str, Dict[str, np.ndarray]]] = None
    frame_share: Optional[np.ndarray] = None  # heat maps: each frame's share of the relevance

    def composite(self) -> np.ndarray:
        """uint8 [T, H, W, 3]: dropped tokens greyed out (selection), else the overlay as a heat
        map."""
        rgb = self.frames.astype(np.float32)
        if self.method == SELECTION:
            grey = rgb.mean(axis=-1, keepdims=True) * 0.35 + 150
            out = np.where(self.overlay[..., None] > 0, rgb, grey)
        else:
            from matplotlib import colormaps
            heat = colormaps['jet'](self.overlay)[..., :3] * 255
            # Opacity grows with the overlay: what the model ignored shows as the frame itself.
            alpha = 0.75 * self.overlay[..., None]
            out = (1 - alpha) * rgb + alpha * heat
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def frame_titles(self) -> List[str]:
        if self.method == SELECTION:
            return [f't{t} ' + ('kept' if frame.any() else 'dropped')
                    for t, frame in enumerate(self.overlay)]
        return [f't{t} {100 * s:.0f}%' for t, s in enumerate(self.frame_share)]

    def save_png(self, path: str, dpi: int = 80) -> str:
        """One picture: the frames with the overlay, the top-k bars and the caption."""
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        images, titles = self.composite(), self.frame_titles()
        count = len(images)
        cols = min(count, FRAMES_PER_ROW)
        rows = math.ceil(count / cols)
        cell = 1.45
        height = rows * (cell + 0.25) + 1.1
        fig = plt.figure(figsize=(cols * cell + 4.2, height))
        grid = fig.add_gridspec(rows, cols + 3, left=0.02, right=0.98, top=1 - 0.45 / height,
                                bottom=0.6 / height, wspace=0.08, hspace=0.3)
        for t, (image, title) in enumerate(zip(images, titles)):
            ax = fig.add_subplot(grid[t // cols, t % cols])
            ax.imshow(image, interpolation='nearest')
            ax.set_title(title, fontsize=8, pad=2)
            ax.axis('off')
        bars = fig.add_subplot(grid[:, cols + 1:])
        names = [entry.get('label', f"class {entry['class']}") for entry in self.top_k]
        scores = [entry['score'] for entry in self.top_k]
        bars.barh(range(len(scores)), scores, color='tab:blue')
        bars.set_yticks(range(len(scores)), [textwrap.shorten(n, 22) for n in names], fontsize=8)
        bars.invert_yaxis()
        bars.set_xlim(0, 1)
        bars.tick_params(axis='x', labelsize=7)
        for i, score in enumerate(scores):
            bars.text(min(score + 0.02, 0.75), i, f'{score:.2f}', va='center', fontsize=8)
        bars.set_title(f'top-{len(scores)} (this view)', fontsize=9)
        fig.suptitle(f'{os.path.basename(self.video)} -- {self.method}', fontsize=10,
                     y=1 - 0.1 / fig.get_figheight(), va='top')
        width_chars = int(fig.get_figwidth() * 13)
        fig.text(0.02, 0.15 / fig.get_figheight(), textwrap.fill(self.caption, width_chars),
                 fontsize=8, va='bottom')
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        return path

    def save_gif(self, path: str, frames_per_second: float = 4, min_side: int = 160) -> str:
        """The composited frames as an animated GIF, enlarged (nearest) to at least `min_side`."""
        from PIL import Image
        images = self.composite()
        scale = max(1, math.ceil(min_side / min(images.shape[1:3])))
        pictures = [Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale),
                                                  Image.NEAREST) for image in images]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        pictures[0].save(path, save_all=True, append_images=pictures[1:], loop=0,
                         duration=int(1000 / frames_per_second))
        return path


def displayable(clip: np.ndarray, data_config) -> np.ndarray:
    """A normalised clip [T, H, W, 3] back to uint8 (undoes `dmvr.normalize`)."""
    x = clip * np.asarray(data_config.normalization_std, np.float32) + np.asarray(
        data_config.normalization_mean, np.float32)
    x = (x + 1) * 127.5 if data_config.zero_centering else x * 255
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def method_of(module) -> str:
    from vtx.models.mvit import MViT
    from vtx.models.video_swin import VideoSwin
    if isinstance(module, MViT) and (module.time_pruning_loc is not None or
                                     module.space_pruning_loc is not None):
        return SELECTION
    if isinstance(module, VideoSwin) and module.time_left_ratio is not None:
        return SELECTION
    if type(module).__name__ in ('VideoViT', 'XViT'):
        return ROLLOUT
    return GRAD_CAM


# ------------------------------------------------------------------------------ attention rollout

def frame_mixing(num_frames: int, group: int, fraction: float) -> np.ndarray:
    """C [T, T]: row t is where a token of frame t gets its channels after a shift of `fraction`
    of them from frame t + 1 and as many from t - 1 within groups of `group` frames (borders
    zero-filled, so dropped), the rest from t; rows normalised."""
    mixing = np.zeros((num_frames, num_frames))
    for t in range(num_frames):
        mixing[t, t] = 1 - 2 * fraction
        for neighbour in (t - 1, t + 1):
            if 0 <= neighbour < num_frames and neighbour // group == t // group:
                mixing[t, neighbour] = fraction
    return mixing / mixing.sum(axis=1, keepdims=True)


def attention_rollout(start: np.ndarray, operations: Sequence) -> np.ndarray:
    """Rollout of `start` [..., T, L] (a weight per output token of T frames of L tokens) back to
    the input tokens, through `operations` in forward order:
      ('attention', W [T, L, L] head-averaged, C [T, T] or None): x <- ((W (x) C) x + x) / 2;
      ('shift_cls', C [T, T]): the class token (index 0) of frame t <- sum_u C[t, u] cls_u.
    Every operation is row-stochastic, so a start that sums to 1 stays a distribution; with the
    identity as `start` ([T*L, T, L]) the result is the full rollout matrix, rows summing to 1."""
    r = np.asarray(start, np.float64)
    for kind, *args in reversed(operations):
        if kind == 'attention':
            weights, mixing = args
            through = np.einsum('...ti,tij->...tj', r, weights)
            if mixing is not None:
                through = _mix_frames(through, mixing)
            r = 0.5 * through + 0.5 * r
        else:
            r = r.copy()
            r[..., 0] = _mix_frames(r[..., 0:1], args[0])[..., 0]
    return r


def _mix_frames(r, mixing):
    """r [..., T, L] times C over frames: the weight on frame t flows to the frames u it read."""
    return np.einsum('...tj,tu->...uj', r, mixing)


def _head_averaged(weights) -> np.ndarray:
    """Sown attention weights [N, heads, L, L] -> [N, L, L], rows renormalised in float64."""
    w = np.asarray(weights, np.float64).mean(axis=1)
    return w / w.sum(axis=-1, keepdims=True)


def rollout_overlay(module, intermediates, frames_shape):
    """(overlay [T, H, W], each frame's share [T]) of the rollout of a VideoViT/XViT over its
    patches (see the module docstring)."""
    from flax.traverse_util import flatten_dict
    sown = {path[:-1]: value[0] for path, value in flatten_dict(intermediates).items()
            if path[-1] == 'attention_weights'}
    num_frames = frames_shape[0]
    xvit = type(module).__name__ == 'XViT'
    fold_fraction = (module.hidden_size // module.shift_div) / module.hidden_size
    operations = []
    if xvit:
        mixing = frame_mixing(num_frames, module.num_segments, fold_fraction)
        mixed_layers = set(range(module.num_layers) if module.mixing_layers is None
                           else module.mixing_layers)
        head = [('attention', _head_averaged(w), None) for path, w in sown.items()
                if path[0] == 'temporal_head']
        head_rollout = attention_rollout(np.eye(num_frames + 1)[None, 0], head)[0]
        start = np.zeros((num_frames, _token_count(sown)))
        start[:, 0] = head_rollout[1:] / head_rollout[1:].sum()
        for path, w in sown.items():
            if path[0] != 'temporal_head':
                layer = int(path[0].rsplit('_', 1)[1])
                operations.append(('attention', _head_averaged(w),
                                   mixing if layer in mixed_layers else None))
    else:
        shift = (frame_mixing(num_frames, num_frames, fold_fraction)
                 if module.temporal == 'token_shift' else None)
        for w in sown.values():
            attention = ('attention', _head_averaged(w), None)
            # TokShift shifts the [CLS] token before attention and again before the MLP.
            operations += ([('shift_cls', shift), attention, ('shift_cls', shift)]
                           if shift is not None else [attention])
        start = np.zeros((num_frames, _token_count(sown)))
        start[:, 0] = 1 / num_frames
    r = attention_rollout(start, operations)
    side = math.isqrt(r.shape[1] - 1)
    patches = r[:, 1:].reshape(num_frames, side, side)
    share = patches.sum(axis=(1, 2)) / patches.sum()
    return _patches_to_pixels(patches, module.patch_size, frames_shape), share


def _token_count(sown) -> int:
    return next(w.shape[-1] for path, w in sown.items() if path[0] != 'temporal_head')


def _patches_to_pixels(patches, patch_size: int, frames_shape) -> np.ndarray:
    """[T, g, g] per patch -> [T, H, W]: each patch's pixels (pixels past the last whole patch,
    which the patch embedding drops, get 0), scaled from the smallest (0) to the largest (1):
    rollout keeps much of the mass spread evenly, which would otherwise tint every patch."""
    pixels = np.zeros(frames_shape, np.float32)
    g = patches.shape[1] * patch_size
    low, high = patches.min(), patches.max()
    scaled = (patches - low) / max(high - low, 1e-12)
    pixels[:, :g, :g] = np.repeat(np.repeat(scaled, patch_size, 1), patch_size, 2)
    return pixels


# ------------------------------------------------------------------------------ STTS selection

def selection_overlay(selectors, intermediates, frames_shape) -> np.ndarray:
    """1 where every selector kept the token covering a pixel, else 0: [T, H, W].

    `selectors`: (module, input shape) of each selector in call order; the kept tokens are the
    indices the selector sowed (batch row 0). The first selector sees every patch frame."""
    num_frames, height, width = frames_shape
    kept = np.ones(frames_shape, bool)
    alive = np.arange(selectors[0][1][1])  # patch frames still in the model, in order
    frame_cell = math.ceil(num_frames / len(alive))
    for module, shape in selectors:
        indices = np.asarray(intermediates[module.name]['indices'][0])
        if isinstance(module, TemporalSelection):
            dropped = np.setdiff1d(alive, alive[indices[0]])
            for frame in dropped:
                kept[frame * frame_cell:(frame + 1) * frame_cell] = False
            alive = alive[indices[0]]
        else:
            side = shape[2]
            window = math.isqrt(module.num_keep)
            stride = module.stride or max((side - window) // 2, 1)
            windows = window_token_indices(side, window, stride)
            rows = np.arange(height) * side // height
            cols = np.arange(width) * side // width
            for t, frame in enumerate(alive):
                grid = np.zeros(side * side, bool)
                grid[windows[indices[t, 0]]] = True
                grid = grid.reshape(side, side)[rows][:, cols]
                kept[frame * frame_cell:(frame + 1) * frame_cell] &= grid
    return kept.astype(np.float32)


def selection_caption(module, selectors) -> str:
    parts = []
    for selector, shape in selectors:
        if isinstance(selector, TemporalSelection):
            ratio = module.time_left_ratio
            parts.append(f'the temporal selector kept {selector.num_keep} of {shape[1]} patch '
                         f'frames (time_left_ratio={ratio:g})')
        else:
            window = math.isqrt(selector.num_keep)
            parts.append(f'the spatial selector kept one {window}x{window} window of the '
                         f'{shape[2]}x{shape[3]} tokens per frame (space_left_ratio='
                         f'{module.space_left_ratio:g})')
    return ('STTS token selection: ' + '; '.join(parts) + '. Dropped tokens are greyed out. '
            'Change the ratios with --config.model.time_left_ratio / space_left_ratio.')


# ------------------------------------------------------------------------------ Grad-CAM

def grad_cam_target(module):
    """(module path, 'input' or 'output'): the last stage's tokens Grad-CAM is taken on."""
    from vtx.models.mvit import MViT
    if isinstance(module, MViT):
        return (f'blocks_{module.depth - 1}',), 'input'
    return ('norm',), 'output'


def upsample(cam: np.ndarray, frames_shape) -> np.ndarray:
    """Token map [t, h, w] -> [T, H, W] trilinearly over the cells the tokens cover (each
    ceil(T / t) x ceil(H / h) x ceil(W / w); cells past the frames are padding, cropped)."""
    cells = [math.ceil(n / m) for n, m in zip(frames_shape, cam.shape)]
    full = jax.image.resize(jnp.asarray(cam, jnp.float32),
                            tuple(m * c for m, c in zip(cam.shape, cells)), 'linear')
    out = np.asarray(full)[:frames_shape[0], :frames_shape[1], :frames_shape[2]]
    return np.maximum(out, 0) / max(out.max(), 1e-12)


# ------------------------------------------------------------------------------ entry point

class _Explainer:
    """One model's explaining forward, compiled once for all the videos of a call."""

    def __init__(self, predictor):
        self.predictor = predictor
        model_config = dict(predictor.config.model.to_dict())
        # Intermediates are sown only by modules called directly (not inside a scan) and the
        # Grad-CAM target is found by its path: the reference layout, same parameters.
        model_config.update({k: False for k in ('remat', 'scan_layers') if k in model_config})
        self.module = build_model(model_config)
        self.method = method_of(self.module)
        self.selectors = []      # (selector, input shape), recorded while tracing
        self.grid = {}           # Grad-CAM: the target tokens' (t, h, w)
        forward = {SELECTION: self._selecting, ROLLOUT: self._attending,
                   GRAD_CAM: self._grad_cam}[self.method]
        self.forward = jax.jit(forward)

    def _record_selectors(self, next_fun, args, kwargs, context):
        if (isinstance(context.module, (TemporalSelection, SpatialWindowSelection))
                and context.method_name == '__call__'):
            self.selectors.append((context.module, tuple(args[0].shape)))
        return next_fun(*args, **kwargs)

    def _selecting(self, params, clip):
        self.selectors.clear()
        with nn.intercept_methods(self._record_selectors):
            logits, state = self.module.apply({'params': params}, clip, mutable=['intermediates'])
        return logits, state['intermediates']

    def _attending(self, params, clip):
        logits, state = self.module.apply({'params': params}, clip, mutable=['intermediates'])
        return logits, state['intermediates']

    def _target_tokens(self, params, clip, delta):
        """(logits, the target tokens [1, t, h, w, C] + delta); delta None: as they are."""
        path, where = grad_cam_target(self.module)
        captured = {}

        def interceptor(next_fun, args, kwargs, context):
            if context.method_name != '__call__' or tuple(context.module.path) != path:
                return next_fun(*args, **kwargs)
            if where == 'input':
                # MViT: [B, 1 + t*h*w, C] with the class token first; the block knows its grid.
                self.grid['thw'] = tuple(context.module.thw)
                x = args[0] if delta is None else args[0] + delta
                captured['tokens'] = x
                return next_fun(x, *args[1:], **kwargs)
            x = next_fun(*args, **kwargs)
            captured['tokens'] = x if delta is None else x + delta
            return captured['tokens']

        with nn.intercept_methods(interceptor):
            logits = self.module.apply({'params': params}, clip)
        return logits, captured['tokens']

    def _grad_cam(self, params, clip):
        shape = jax.eval_shape(lambda: self._target_tokens(params, clip, None)[1]).shape

        def predicted_logit(delta):
            logits, tokens = self._target_tokens(params, clip, delta)
            return logits[0, jnp.argmax(logits[0])], (logits, tokens)

        grads, (logits, tokens) = jax.grad(predicted_logit, has_aux=True)(
            jnp.zeros(shape, jnp.float32))
        if 'thw' in self.grid:
            t, h, w = self.grid['thw']
            grads = grads[:, 1:].reshape(1, t, h, w, -1)
            tokens = tokens[:, 1:].reshape(1, t, h, w, -1)
        channel_weights = grads.astype(jnp.float32).mean(axis=(1, 2, 3))        # [1, C]
        cam = jnp.einsum('bthwc,bc->bthw', tokens.astype(jnp.float32), channel_weights)
        return logits, jax.nn.relu(cam)[0]

    def __call__(self, video, top_k: int) -> Explanation:
        from vtx.predict import video_views
        predictor, config = self.predictor, self.predictor.config
        views = video_views(video, config.data)
        clip = jnp.asarray(views[:1], jnp.float32)
        frames = displayable(views[0], config.data)
        shape = frames.shape[:3]
        logits, extra = self.forward(predictor.params, clip)
        probs = np.asarray(jax.nn.softmax(logits[0].astype(jnp.float32)))
        top = predictor.top_k(probs, top_k)
        views_note = (f' Explained: the first of the {len(views)} views of the test protocol.'
                      if len(views) > 1 else '')
        if self.method == SELECTION:
            overlay, share = selection_overlay(self.selectors, extra, shape), None
            caption = selection_caption(self.module, self.selectors)
        elif self.method == ROLLOUT:
            overlay, share = rollout_overlay(self.module, extra, shape)
            if type(self.module).__name__ == 'XViT':
                route = ', through space-time mixing and the temporal head'
            else:
                route = (', through the [CLS] token shift'
                         if self.module.temporal == 'token_shift' else '')
            caption = ('Attention rollout (Abnar & Zuidema 2020) from the class token over '
                       f'patches and frames{route}; from the least-used patch (clear) to the most '
                       "(red); the percentages are each frame's share of the rollout.")
        else:
            cam = np.asarray(extra)
            overlay = upsample(cam, shape)
            share = overlay.sum(axis=(1, 2)) / max(overlay.sum(), 1e-12)
            label = top[0].get('label', f"class {top[0]['class']}")
            caption = (f'Grad-CAM of the predicted class ({label}) on the last stage\'s '
                       f'{"x".join(map(str, cam.shape))} tokens, upsampled to the frames; red = '
                       'evidence for the class; the percentages are each frame\'s share.')
        name = video if isinstance(video, str) else f'array {np.shape(video)}'
        selected = ({selector: {field: np.asarray(values[0]) for field, values in sown.items()}
                     for selector, sown in extra.items()} if self.method == SELECTION else None)
        return Explanation(name, frames, overlay.astype(np.float32), self.method, top,
                           caption + views_note, selected, share)


# Each loaded model's explainer, kept while the model is: its forward is compiled once.
_EXPLAINERS = weakref.WeakKeyDictionary()


def explain(predictor, videos: Sequence, top_k: int = 5) -> List[Explanation]:
    """Explanations of `videos` (files or uint8 frames [T, H, W, 3]) by a loaded model
    (`vtx.load`, `vtx.predict.Predictor`), one per video in order; a video that cannot be decoded
    is an error naming it."""
    from vtx.data import video_io
    if predictor not in _EXPLAINERS:
        _EXPLAINERS[predictor] = _Explainer(predictor)
    explainer = _EXPLAINERS[predictor]
    out = []
    for video in videos:
        try:
            out.append(explainer(video, top_k))
        except video_io.DecodeError as e:
            raise VtxError(str(e)) from None
    return out


def write_explanations(predictor, videos: Sequence[str], out_dir: str, top_k: int = 5,
                       gif: bool = False) -> List[str]:
    """OUT_DIR/<video name>.png (and .gif) per video file; returns the paths written."""
    written, used = [], set()
    for video, explanation in zip(videos, explain(predictor, videos, top_k)):
        stem = os.path.splitext(os.path.basename(video))[0]
        name, n = stem, 1
        while name in used:  # two videos of one name in different folders
            n += 1
            name = f'{stem}_{n}'
        used.add(name)
        written.append(explanation.save_png(os.path.join(out_dir, name + '.png')))
        if gif:
            written.append(explanation.save_gif(os.path.join(out_dir, name + '.gif')))
    return written
