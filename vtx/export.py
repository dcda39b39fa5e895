"""Serving artefacts of a trained or converted model: `export` writes a `jax.export` serialization
(StableHLO) or a TF SavedModel with its serving.json, `load_stablehlo` reloads the first. The command
line `vtx-export` (`vtx.commands.export`) runs `export`; its help says what the artefacts take and
return.
"""
import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vtx.errors import VtxError  # noqa: E402

SERVING_META = 'serving.json'
STABLEHLO_FILE = 'model.jax_exported'
FORMATS = ('stablehlo', 'savedmodel')


def serving_metadata(config, label_names=None, output: str = 'logits', width: int = 0) -> dict:
    """What a caller needs to feed the artefact and read its output."""
    d = config.data
    return {
        'format': 'vtx-serving-v1',
        'input': {'name': 'video', 'shape': ['B', d.num_frames, d.crop_size, d.crop_size, 3],
                  'dtype': 'float32', 'layout': 'clips of RGB frames, channels last'},
        'normalization': {
            'scale': '2 * x / 255 - 1' if d.zero_centering else 'x / 255',
            'mean': np.ravel(d.normalization_mean).tolist(),
            'std': np.ravel(d.normalization_std).tolist(),
            'formula': '(scale(uint8 frames) - mean) / std'},
        'output': {'name': output, 'dtype': 'float32',
                   'shape': ['B', d.num_classes if output == 'logits' else width]},
        'test_protocol': {k: d.get(k) for k in (
            'num_frames', 'stride', 'sampling', 'min_resize', 'crop_size', 'eval_num_clips',
            'eval_num_crops', 'eval_aggregation')},
        'model': config.model.to_dict(),
        'label_names': list(label_names) if label_names else None,
    }


OUTPUTS = ('logits', 'features')


def _output_fn(predictor, output: str):
    """(params, clips) -> float32 logits [B, K], or the embeddings [B, D] (`steps.eval_features`)."""
    from vtx import steps
    if output == 'features':
        return lambda params, clips: steps.eval_features(predictor.model, params, clips).astype(
            jnp.float32)  # under 'auto' precision a GPU computes in bfloat16
    return lambda params, clips: steps.eval_logits(predictor.model, params, clips).astype(jnp.float32)


def _clip_shape(config):
    d = config.data
    return (d.num_frames, d.crop_size, d.crop_size, 3)


def export_stablehlo(predictor, out: str, platforms=None, output: str = 'logits') -> str:
    """Writes out/model.jax_exported (batch dimension symbolic); returns its path."""
    fn = _output_fn(predictor, output)
    params = predictor.params
    batch, = jax.export.symbolic_shape('b')
    spec = jax.ShapeDtypeStruct((batch, *_clip_shape(predictor.config)), jnp.float32)
    exported = jax.export.export(jax.jit(lambda video: fn(params, video)),
                                 platforms=platforms)(spec)
    path = os.path.join(out, STABLEHLO_FILE)
    with open(path, 'wb') as f:
        f.write(exported.serialize())
    return path


def load_stablehlo(path: str):
    """The exported function (a `jax.export.Exported`; call `.call(video)`) from an artefact
    folder written by `export_stablehlo`, or from the file itself."""
    if os.path.isdir(path):
        path = os.path.join(path, STABLEHLO_FILE)
    with open(path, 'rb') as f:
        return jax.export.deserialize(f.read())


def export_savedmodel(predictor, out: str, platforms=None, output: str = 'logits') -> str:
    """Writes a TF SavedModel to `out` (batch dimension polymorphic); returns `out`."""
    from jax.experimental import jax2tf

    from vtx.data.tf_on_host import tf
    variables = tf.nest.map_structure(tf.Variable, jax.device_get(predictor.params))
    converted = jax2tf.convert(_output_fn(predictor, output), polymorphic_shapes=[None, '(b, ...)'],
                               native_serialization_platforms=platforms, with_gradient=False)
    module = tf.Module()
    module.params = variables
    module.serve = tf.function(
        lambda video: {output: converted(module.params, video)}, autograph=False,
        input_signature=[tf.TensorSpec((None, *_clip_shape(predictor.config)), tf.float32,
                                       name='video')])
    tf.saved_model.save(module, out, signatures={'serving_default': module.serve})
    return out


def export(config, checkpoint_dir: str, fmt: str, out: str, platforms=None,
           label_names=None, output: str = 'logits') -> str:
    """Loads the params and writes the artefact and its serving.json into the new folder `out`."""
    from vtx.predict import Predictor
    if fmt not in FORMATS:
        raise VtxError(f'--format={fmt!r}: expected one of {FORMATS}')
    if os.path.exists(out) and os.listdir(out):
        raise VtxError(f'--out {out} exists and is not empty; choose a new folder')
    if output not in OUTPUTS:
        raise VtxError(f'--output={output!r}: expected one of {OUTPUTS}')
    predictor = Predictor(config, checkpoint_dir, label_names)
    platforms = tuple(platforms) if platforms else (jax.export.default_export_platform(),)
    os.makedirs(out, exist_ok=True)
    writer = export_stablehlo if fmt == 'stablehlo' else export_savedmodel
    path = writer(predictor, out, platforms, output)
    clip = jax.ShapeDtypeStruct((1, *_clip_shape(config)), jnp.float32)
    width = jax.eval_shape(_output_fn(predictor, output), predictor.params, clip).shape[-1]
    meta = serving_metadata(config, predictor.label_names, output, width) | {
        'platforms': list(platforms)}
    with open(os.path.join(out, SERVING_META), 'w') as f:
        json.dump(meta, f, indent=1)
    return path


if __name__ == '__main__':   # `python -m vtx.export` is the vtx-export command
    from vtx.commands import export as command
    command.run()
