"""Parity check of one official fixture: `python -m convert.verify CASE_DIR [--json]`.

Reads `CASE_DIR/manifest.json`, builds the vtx model from the official config it records (the
family's `model_config_from_manifest`), converts `checkpoint.pth`, runs `input.npy` and compares
with `logits.npy` (and `probs.npy`, the official test-path output, where present) using the
manifest tolerance. Prints one JSON line; exits 0 only if the case passes. Where the case has
`features.npy` and the model can return its head input, their difference is reported too
(informative only: it localises a mismatch).
"""
import argparse
import json
import os
import sys

import numpy as np

DEFAULT_TOLERANCE = {'atol': 1e-5, 'rtol': 1e-4}


def to_model_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """NCTHW or NTCHW (the manifest's `input.layout`, first word) -> vtx's [B, T, H, W, C]."""
    layout = layout.split()[0]
    perms = {'NCTHW': (0, 2, 3, 4, 1), 'NTCHW': (0, 1, 3, 4, 2), 'NTHWC': (0, 1, 2, 3, 4)}
    if layout not in perms:
        raise ValueError(f'manifest input layout {layout!r} is not one of {sorted(perms)}')
    return np.ascontiguousarray(x.transpose(perms[layout]))


def _errors(ours: np.ndarray, ref: np.ndarray, atol: float, rtol: float):
    if ours.shape != ref.shape:
        return float('inf'), float('inf'), False
    diff = np.abs(ours.astype(np.float64) - ref)
    rel = diff / np.maximum(np.abs(ref), 1e-12)
    return float(diff.max()), float(rel.max()), bool(np.allclose(ours, ref, atol=atol, rtol=rtol))


def verify_case(case_dir: str, log=None) -> dict:
    """Converts and runs one case in-process; returns the result dict that the CLI prints."""
    import jax
    import jax.numpy as jnp

    from vtx import families as registry
    from vtx import steps
    from vtx.convert import engine, families
    from vtx.models import build_model

    with open(os.path.join(case_dir, 'manifest.json')) as f:
        manifest = json.load(f)
    family = manifest['family']
    module = families.converter(family)
    model_config = dict(module.model_config_from_manifest(manifest))
    model = build_model(model_config)
    video = to_model_layout(np.load(os.path.join(case_dir, manifest['input']['file'])),
                            manifest['input']['layout'])
    abstract = engine.abstract_params_of(model, jnp.zeros(video.shape, jnp.float32), train=False)
    params = families.convert_checkpoint(
        family, os.path.join(case_dir, manifest['checkpoint']['file']), model_config, abstract,
        log=log)
    outputs = manifest.get('outputs', {})
    # The head input (features.npy), where both sides have it, localises a mismatch.
    with_features = ('features' in outputs and
                     registry.family(model_config['name']).returns_features)
    kwargs = {'return_features': True} if with_features else {}
    # Compiled as vtx compiles its forward programs (`steps.jit_forward`), so parity holds there.
    out = steps.jit_forward(lambda p, v: model.apply({'params': p}, v, train=False, **kwargs))(
        params, jnp.asarray(video))
    logits, features = out if with_features else (out, None)
    logits = np.asarray(logits)
    tol = {**DEFAULT_TOLERANCE, **manifest.get('tolerance', {})}
    ref = np.load(os.path.join(case_dir, outputs.get('logits', 'logits.npy')))
    abs_err, rel_err, passed = _errors(logits, ref, tol['atol'], tol['rtol'])
    result = {'case': manifest.get('case', os.path.basename(os.path.normpath(case_dir))),
              'family': family, 'max_abs_err': abs_err, 'max_rel_err': rel_err, 'passed': passed}
    if 'probs' in outputs:
        probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
        p_abs, _, p_ok = _errors(probs, np.load(os.path.join(case_dir, outputs['probs'])),
                                 tol['atol'], tol['rtol'])
        result['probs_max_abs_err'] = p_abs
        result['passed'] = passed and p_ok
    if features is not None:
        ref = np.load(os.path.join(case_dir, outputs['features']))
        if np.shape(features) == ref.shape:
            result['features_max_abs_err'] = float(np.abs(np.asarray(features) - ref).max())
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('case_dir')
    parser.add_argument('--json', action='store_true',
                        help='print only the JSON line (no conversion report)')
    args = parser.parse_args(argv)
    result = verify_case(args.case_dir, log=None if args.json else print)
    print(json.dumps(result))
    return 0 if result['passed'] else 1


if __name__ == '__main__':
    sys.exit(main())
