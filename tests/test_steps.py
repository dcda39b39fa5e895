"""vtx.steps: the trainer, the report and the benchmark run the jitted steps of one builder; the
trainer refuses a config whose model and data disagree before it writes anything."""
import dataclasses

import pytest

from conftest import tiny_demo_config
from vtx import benchmark, report, steps, train
from vtx.config import ConfigError


@pytest.mark.parametrize('field, value, message', [
    ('model.num_classes', 5, r'config\.model\.num_classes=5 but config\.data\.num_classes=4'),
    ('data.num_frames', 4, r'config\.model\.num_frames=8 but config\.data\.num_frames=4'),
    ('data.crop_size', 24, r'config\.model\.image_size=16 but config\.data\.crop_size=24'),
])
def test_model_data_mismatch_fails_before_the_workdir_is_made(tmp_path, field, value, message):
    data = tmp_path / 'data'  # synthetic data would be generated here by a run that got further
    config = tiny_demo_config(str(data), **{field: value})
    workdir = tmp_path / 'run'
    with pytest.raises(ConfigError, match=message):
        train.train_and_evaluate(config, str(workdir))
    assert not workdir.exists() and not data.exists()


class _Recorded:
    """Stands in for one of `steps.build`'s jitted functions and notes each call and lowering."""

    def __init__(self, name, fn, uses):
        self.name, self.fn, self.uses = name, fn, uses
        self.__wrapped__ = fn.__wrapped__   # what `report.traced_macs` traces, as of a jit

    def __call__(self, *args):
        self.uses.append((self.name, 'call'))
        return self.fn(*args)

    def lower(self, *args):
        self.uses.append((self.name, 'lower'))
        return self.fn.lower(*args)


def test_trainer_report_and_benchmark_use_the_built_steps(demo_data_dir, tmp_path, monkeypatch):
    uses = []
    build = steps.build

    def recording_build(config, mesh):
        built = build(config, mesh)
        return dataclasses.replace(built, train_step=_Recorded('train_step', built.train_step, uses),
                                   forward=_Recorded('forward', built.forward, uses))

    monkeypatch.setattr(steps, 'build', recording_build)
    config = tiny_demo_config(demo_data_dir, **{'train.num_steps': 2})
    train.train_and_evaluate(config, str(tmp_path / 'run'), 'train')
    assert uses == [('train_step', 'call')] * 2

    uses.clear()
    report.analyse(config, batch=2, compile_modes=())
    assert ('train_step', 'lower') in uses and ('forward', 'lower') in uses

    uses.clear()
    peak = benchmark.matmul_peak('float32', size=64, repeats=1)
    benchmark.benchmark(config, batch=2, mode='train', warmup=0, steps=1, peak=peak)
    assert ('train_step', 'lower') in uses


def test_forward_programs_take_onednn_dots_where_the_cpu_has_avx512(tmp_path):
    """The programs without a backward pass compile with `xla_flags.forward_compiler_options`:
    on an AVX-512 CPU their matmuls are oneDNN's, while the train step keeps XLA's defaults;
    elsewhere neither has a oneDNN matmul."""
    import jax
    from vtx import xla_flags
    built = report.build_steps(tiny_demo_config(str(tmp_path)))
    state = built.init_state()
    batch = benchmark.random_batch(built, 2)
    compiled = {mode: fn.lower(*args).compile().as_text() for mode in ('forward', 'train')
                for fn, args in [report.step_call(built, mode, state, batch)]}
    eval_batch = {'image': batch['image'][:, None], 'label': batch['label'],
                  'mask': jax.numpy.ones(batch['label'].shape, bool)}
    compiled['eval'] = built.eval_step.lower(state.params, eval_batch).compile().as_text()
    onednn = {mode: '__onednn_fusion' in text for mode, text in compiled.items()}
    expected = ('avx512f' in xla_flags.cpu_flags()
                and not xla_flags._xla_flags_named() & set(xla_flags.FORWARD_CPU_OPTIONS))
    assert onednn == {'forward': expected, 'eval': expected, 'train': False}
