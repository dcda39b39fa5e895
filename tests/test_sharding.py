"""The trainer's sharded train step (`vtx.steps.build`) equals the single-device step (8 forced
CPU devices, in a subprocess)."""
import json
import os
import re
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

LAYOUTS = {  # name -> (model_axis_size, param_sharding)
    'data8': (1, 'replicated'),
    'data4_model2': (2, 'replicated'),
    'fsdp8': (1, 'fsdp'),
    'fsdp4_model2': (2, 'fsdp'),
}


def run_layouts():
    """Runs 3 train steps from the same init on 1 device and on each 8-device layout."""
    import jax
    from conftest import tiny_demo_config
    from vtx import sharding, steps

    config = tiny_demo_config('/nonexistent', **{'train.grad_accum_steps': 2,
                                                'model.drop_path_rate': 0.1,
                                                'mesh.fsdp_min_size': 64})
    rng = np.random.default_rng(0)
    batches = [{'image': rng.standard_normal((8, 8, 16, 16, 3)).astype(np.float32),
                'label': rng.integers(0, 4, 8).astype(np.int32)} for _ in range(3)]
    results = {}
    for name, devices, (model_axis, placement) in [('single', jax.devices()[:1], (1, 'replicated'))] + [
            (n, jax.devices(), layout) for n, layout in LAYOUTS.items()]:
        config.mesh.model_axis_size = model_axis
        config.mesh.param_sharding = placement
        mesh = sharding.make_mesh(config.mesh, devices)
        built = steps.build(config, mesh)
        state = built.init_state()
        losses = []
        for b in batches:
            state, metrics = built.train_step(state, jax.device_put(b, built.batch_sharding))
            losses.append(float(metrics['loss']))
        kernel = state.params['layer_1']['ffn']['fc1']['kernel']
        placed = jax.device_put(batches[0], built.batch_sharding)
        hlo = built.train_step.lower(state, placed).compile().as_text()
        constraints = str(jax.make_jaxpr(built.train_step)(state, placed)).count(
            'sharding_constraint')
        results[name] = {'losses': losses, 'all_gathered': re.findall(
                             r'= \w+\[([\d,]*)\]\S* all-gather(?:-start)?\(', hlo),
                         'param_shapes': [list(x.shape) for x in jax.tree.leaves(state.params)],
                         'constraints': constraints,
                         'params': [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state.params)],
                         'kernel_sharding': str(kernel.sharding.spec), 'devices': len(mesh.devices.flat)}
    print('RESULTS' + json.dumps(results))


def test_sharded_step_matches_single_device():
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
    out = subprocess.run([sys.executable, __file__], env=env, cwd=HERE, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.split('RESULTS', 1)[1])
    single = results.pop('single')
    assert single['devices'] == 1
    for name, r in results.items():
        assert r['devices'] == 8, name
        np.testing.assert_allclose(r['losses'], single['losses'], rtol=1e-5, err_msg=name)
        for a, b in zip(r['params'], single['params']):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)
    # The layouts really differ: FSDP shards the MLP kernel over 'data', model-parallel over 'model'.
    assert 'data' in results['fsdp8']['kernel_sharding']
    assert 'model' in results['data4_model2']['kernel_sharding']
    assert 'data' not in results['data8']['kernel_sharding']  # replicated over the data axis
    # The models' logical activation constraints act in the steps (flax drops them without rules
    # and a mesh): each of the 2 blocks constrains its output and its MLP hidden activations.
    for name in LAYOUTS:
        assert results[name]['constraints'] >= 4, (name, results[name]['constraints'])
    # FSDP gathers weights, never activations: beyond what its replicated layout gathers, no
    # all-gather is larger than the largest parameter. (XLA's partitioner gathered the clips and
    # activations of the whole micro-batch until `sharding.gather_params` placed the weights.)
    size = lambda shape: int(np.prod([int(d) for d in shape.split(',') if d]))
    largest_param = max(int(np.prod(s)) for s in results['fsdp8']['param_shapes'])
    for name, replicated in (('fsdp8', 'data8'), ('fsdp4_model2', 'data4_model2')):
        allowed = max([largest_param] + [size(s) for s in results[replicated]['all_gathered']])
        assert results[name]['all_gathered'], name
        assert max(map(size, results[name]['all_gathered'])) <= allowed, (
            name, results[name]['all_gathered'])

if __name__ == '__main__':
    sys.path.insert(0, os.path.dirname(HERE))
    run_layouts()
