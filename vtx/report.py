"""Model report: parameters, FLOPs/MACs per view (forward and train step) and peak memory.

`vtx-report --config NAME|FILE [--batch N] [--json] [--config.a.b=v ...]` prints it
(`vtx.commands.report`).

Nothing is materialised: the model, the train state and the batch are abstract shapes, and the
numbers come from lowering and compiling the jitted functions that `vtx.steps.build` makes for
the trainer (`train_step`) and for serving (`forward`), on one device for the whole batch:
- `xla_flops`: the compiled executable's cost analysis. XLA counts 2 FLOPs per multiply-add
  and 1 per elementwise op (softmax, norms, GELU, adds), so it is above 2 x MACs where the
  program compiled here does the model's work; on CPU Video Swin's leaves out the masked pairs
  across its shifted windows' regions (`video_swin.shifted_windows_apart`).
- `macs`: multiply-accumulates of every matmul and convolution (`dot_general`,
  `conv_general_dilated`) in the program traced in the accelerators' forms (`counted_macs`),
  counted from their shapes: the model's work on every backend. This is the convention of the
  papers' "GFLOPs" (fvcore/mmcv count MACs of matmuls and convs).
- `macs_excluding_attention`: the same without the matmuls between two activations (attention
  scores q k^T and the weighted sum of v): TokShift's published convention.
- peak memory: XLA's memory analysis of the compiled step for the given batch (arguments +
  outputs + temporaries - donated/aliased buffers) on the default backend.
"""
import copy
import math
import time

import jax
import jax.numpy as jnp

from vtx import sharding, steps
from vtx.errors import VtxError
from vtx.kernels import backend, native
from vtx.models import IMPLEMENTATION_FIELDS

MODES = ('forward', 'train')


def _subjaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def count_macs(jaxpr, params_are=None) -> dict:
    """Multiply-accumulates of the matmuls, convolutions and native window attention
    (`vtx.kernels.native`) in `jaxpr` (a core.Jaxpr).

    `params_are`: the set of variables that hold weights (inputs of the traced function that are
    parameters). A matmul with no operand derived from a weight is "activation x activation"
    (attention); a value computed only from weights and constants counts as a weight. Loops multiply by their trip count (`scan`); `cond` counts its costliest branch.
    """
    weights = set(params_are or ())
    totals = {'macs': 0, 'attention_macs': 0}

    def visit(jaxpr, weight_vars, times):
        weight_vars = set(weight_vars)
        for eqn in jaxpr.eqns:
            name = eqn.primitive.name
            ins = [v for v in eqn.invars if isinstance(v, jax.extend.core.Var)]
            if name == 'dot_general':
                (lhs_contract, _), _ = eqn.params['dimension_numbers']
                lhs = eqn.invars[0].aval.shape
                macs = math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
                totals['macs'] += times * macs
                if not any(v in weight_vars for v in ins):
                    totals['attention_macs'] += times * macs
            elif name == 'ffi_call' and eqn.params['target_name'].startswith(native.TARGET):
                macs = native.window_attention_macs(eqn.invars[0].aval.shape)
                totals['macs'] += times * macs
                totals['attention_macs'] += times * macs
            elif name == 'conv_general_dilated':
                rhs = eqn.invars[1].aval.shape
                out_features = rhs[eqn.params['dimension_numbers'].rhs_spec[0]]
                totals['macs'] += times * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) // out_features
            if name == 'scan':
                body = eqn.params['jaxpr'].jaxpr
                visit(body, _map_weights(eqn, body, weight_vars), times * eqn.params['length'])
            elif name == 'cond':
                costs = []
                for branch in eqn.params['branches']:
                    before = dict(totals)
                    visit(branch.jaxpr, _map_weights(eqn, branch.jaxpr, weight_vars, offset=1), times)
                    costs.append({k: totals[k] - before[k] for k in totals})
                    totals.update(before)
                for k in totals:
                    totals[k] += max(c[k] for c in costs)
            else:
                for sub in _subjaxprs(eqn):
                    visit(sub, _map_weights(eqn, sub, weight_vars), times)
            # Values computed from weights and constants only count as weights (casts, reshapes,
            # the relative-position bias gather); anything touched by the input does not.
            if all(v in weight_vars for v in ins):
                weight_vars.update(eqn.outvars)

    visit(jaxpr, weights, 1)
    totals['macs_excluding_attention'] = totals['macs'] - totals['attention_macs']
    return totals


def _map_weights(eqn, sub, weight_vars, offset=0):
    """The sub-jaxpr inputs bound to weight operands of `eqn` (positionally, after `offset`)."""
    operands = eqn.invars[offset:]
    if len(operands) != len(sub.invars):
        return set()  # an unusual binding: treat nothing inside as a weight (conservative)
    return {inner for inner, outer in zip(sub.invars, operands)
            if isinstance(outer, jax.extend.core.Var) and outer in weight_vars}


def _abstract_batch(config, batch: int):
    return {'image': jax.ShapeDtypeStruct(steps.input_shape(config, batch), jnp.float32),
            'label': jax.ShapeDtypeStruct((batch,), jnp.int32)}


def build_steps(config, devices=None) -> steps.Steps:
    """`vtx.steps.build` of `config` on a mesh of `devices` (default: all, as training), with one
    micro-batch per step: the report and the benchmark cost one step of the batch they are given.
    Only shapes are traced; the state is abstract (`abstract_state`) until `init_state` runs."""
    config = copy.deepcopy(config)
    config.train.grad_accum_steps = 1
    mesh = sharding.make_mesh(config.mesh, devices)
    return steps.build(config, mesh)


def checked_modes(modes) -> tuple:
    """`modes` as a tuple, each one of MODES (else an error naming `--mode`)."""
    for mode in modes:
        if mode not in MODES:
            raise VtxError(f'--mode {mode!r}: use one of {MODES}')
    return tuple(modes)


def step_call(built: steps.Steps, mode: str, state, batch):
    """(the jitted function of `built` that runs `mode`, its arguments for `state` and `batch`)."""
    checked_modes([mode])
    if mode == 'forward':
        return built.forward, (state.params, batch['image'])
    return built.train_step, (state, batch)


def peak_memory_bytes(compiled) -> int | None:
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
               + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def traced_macs(fn, args, params) -> dict:
    """`count_macs` of the jitted `fn(*args)`, with the leaves of `params` (within `args`) as the
    weights."""
    # The jit's own function is traced (JAX refuses to trace a forward-only jit,
    # `steps.jit_forward`, inside another trace); its inputs are the flattened `args` leaves, and
    # the parameters are known by identity.
    inner = jax.make_jaxpr(fn.__wrapped__)(*args).jaxpr
    param_ids = {id(p) for p in jax.tree.leaves(params)}
    weight_vars = {v for v, leaf in zip(inner.invars, jax.tree.leaves(args))
                   if id(leaf) in param_ids}
    return count_macs(inner, weight_vars)


def model_macs(config, batch: int, mode: str) -> int:
    """MACs of one `mode` step with every fast path at its reference: the model's work, for MFU."""
    config = copy.deepcopy(config)
    for field, value in IMPLEMENTATION_FIELDS.items():
        if field in config.model:
            config.model[field] = value
    return counted_macs(config, batch, mode)['macs']


def counted_macs(config, batch: int, mode: str) -> dict:
    """`traced_macs` of one `mode` step of `config`, traced on one device (the program is the same
    on any mesh) in the forms accelerators run (`backend.accelerator_forms`). The CPU forms do the
    same work except where they leave out what the official model computes and discards (Video
    Swin's masked pairs across its shifted windows' regions, `video_swin.shifted_windows_apart`),
    so these are the model's MACs on every backend."""
    with backend.accelerator_forms():
        built = build_steps(config, jax.devices()[:1])
        state = built.abstract_state
        fn, args = step_call(built, mode, state, _abstract_batch(built.config, batch))
        return traced_macs(fn, args, state.params)


def step_costs(fn, args, params, mode: str, compile: bool = True, macs: dict | None = None):
    """(compiled `fn`, its costs for one call `fn(*args)`) where `args` may be abstract and
    `params` are the weights among them. The MACs are those of `fn` as traced here (what runs),
    or `macs`, a `traced_macs` result counted elsewhere (`analyse`: the model's).

    compile=False skips XLA's optimisation passes (seconds instead of up to a minute for a big
    train step on CPU): the FLOPs then come from the unoptimised HLO (within ~0.5% of the
    compiled count) and there is no memory analysis (None, None for the executable).
    """
    start = time.perf_counter()
    lowered = fn.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile() if compile else None
    compiled_at = time.perf_counter()
    if macs is None:
        macs = traced_macs(fn, args, params)  # after the timing: a trace before would be reused
    cost = (compiled or lowered).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out = {'xla_flops': float(cost.get('flops', float('nan'))),
           'transcendentals': float(cost.get('transcendentals', 0.0)),
           'macs': macs['macs'],
           'peak_memory_bytes': peak_memory_bytes(compiled) if compile else None,
           # Tracing + lowering to HLO (Python), then XLA's compilation: what scan_layers cuts.
           'lower_s': lowered_at - start, 'xla_compile_s': compiled_at - lowered_at}
    if mode == 'forward':  # in a train step the weight-gradient matmuls look like attention
        out['macs_excluding_attention'] = macs['macs_excluding_attention']
    return compiled, out


def analyse(config, batch: int = 1, modes=MODES, compile_modes=MODES) -> dict:
    """The report for `config` at batch size `batch`: see the module docstring for each field.

    Modes not in `compile_modes` are costed on the unoptimised HLO (see `step_costs`).
    """
    modes = checked_modes(modes)
    built = build_steps(config, jax.devices()[:1])
    given, config, state = config, built.config, built.abstract_state
    d = config.data
    out = {'model': config.model.name, 'dtype': str(config.model.get('dtype', 'float32')),
           'input_shape_per_view': list(steps.input_shape(config, 1)), 'batch': batch,
           'params': int(sum(math.prod(p.shape) for p in jax.tree.leaves(state.params))),
           'backend': jax.default_backend(),
           'views_per_video': d.eval_num_clips * d.eval_num_crops}
    per_batch = ('peak_memory_bytes', 'compiled', 'lower_s', 'xla_compile_s')
    for mode in modes:
        fn, args = step_call(built, mode, state, _abstract_batch(config, batch))
        _, costs = step_costs(fn, args, state.params, mode, compile=mode in compile_modes,
                              macs=counted_macs(given, batch, mode))
        costs['compiled'] = mode in compile_modes
        out[mode] = {(k if k in per_batch else k + '_per_view'): (v if k in per_batch else v / batch)
                     for k, v in costs.items()}
    return out


def format_report(r: dict) -> str:
    lines = [f"{r['model']} ({r['dtype']}), input per view {r['input_shape_per_view']}, "
             f"batch {r['batch']}, backend {r['backend']}",
             f"  params: {r['params'] / 1e6:.2f} M"]
    for mode in MODES:
        if mode in r:
            m = r[mode]
            mem = m['peak_memory_bytes']
            parts = [f"{m['macs_per_view'] / 1e9:.2f} GMACs/view"]
            if 'macs_excluding_attention_per_view' in m:
                parts.append(f"{m['macs_excluding_attention_per_view'] / 1e9:.2f} GMACs excl. attention")
            parts.append(f"XLA {m['xla_flops_per_view'] / 1e9:.2f} GFLOPs/view")
            parts.append('peak memory ' + (f'{mem / 2**20:.1f} MiB' if mem is not None else 'n/a'))
            lines.append(f'  {mode:7s}: ' + ', '.join(parts))
    return '\n'.join(lines)


if __name__ == '__main__':   # `python -m vtx.report` is the vtx-report command
    from vtx.commands import report as command
    command.run()
