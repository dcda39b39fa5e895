"""vtx.kernels: each kernel against the plain computation it stands for.

(The attention VJP against autodiff of the attention formula is
tests/test_video_swin.py::test_attention_vjp_equals_autodiff_of_the_formula; that the
fast paths keep official parity is tests/test_benchmark.py.)"""
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vtx.errors import VtxError
from vtx.kernels import attention as attention_kernel
from vtx import report, steps
from vtx.kernels import backend, native, patches
from vtx.kernels.attention import (attention, attention_with_weights, dot_product_attention,
                                   sum_to_shape)
from vtx.kernels.pooling import _weight_gradient, max_pool, shifted_sum_conv
from vtx.kernels.projection import dense_projections
from vtx.kernels.top_k import hard_top_k, perturbed_top_k


# --------------------------------------------------------------------------- attention

@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('with_mask', [False, True])
def test_attention_trains_with_the_forward_it_evaluates(dtype, with_mask):
    """Eval (the primal), the VJP's forward and the weights-returning formula give the same bits."""
    rng = np.random.default_rng(1)
    windows, n, heads, hd = (2, 3), 10, 2, 4
    q, k, v = (jnp.asarray(rng.normal(size=(1, *windows, n, heads, hd)), dtype) for _ in range(3))
    bias = jnp.asarray(rng.normal(size=(heads, n, n)), jnp.float32)
    mask = (jnp.asarray(np.where(rng.random((*windows, 1, n, n)) < 0.3, -100.0, 0.0), jnp.float32)
            if with_mask else None)
    evaluated = attention(q, k, v, bias, mask)
    trained, _ = jax.vjp(lambda a: attention(a, k, v, bias, mask), q)
    formula, weights = attention_with_weights(q, k, v, bias=bias if mask is None else bias + mask)
    assert evaluated.dtype == dtype and weights.shape == (1, *windows, heads, n, n)
    np.testing.assert_array_equal(trained, evaluated)
    np.testing.assert_array_equal(formula, evaluated)
    np.testing.assert_array_equal(dot_product_attention(q, k, v, bias=bias, mask=mask), evaluated)


def _formula(q, k, v):
    """softmax(q k^T / sqrt(d)) v over [..., length, heads, head_dim] inputs, by autodiff-able jnp:
    the reference for attention without bias or mask."""
    s = jnp.einsum('...qhd,...khd->...hqk', q, k) / np.sqrt(q.shape[-1])
    return jnp.einsum('...hqk,...khd->...qhd', jax.nn.softmax(s, axis=-1), v)


def test_attention_is_the_textbook_formula():
    """Against a float64 numpy softmax(q k^T / sqrt(d)) v in the token-major layout, with keys and
    queries of different lengths (MViT's pooled keys)."""
    rng = np.random.default_rng(5)
    q = rng.normal(size=(2, 7, 3, 4))
    k, v = rng.normal(size=(2, 5, 3, 4)), rng.normal(size=(2, 5, 3, 4))
    s = np.einsum('bqhd,bkhd->bhqk', q, k) / 2.0
    p = np.exp(s - s.max(-1, keepdims=True))
    expected = np.einsum('bhqk,bkhd->bqhd', p / p.sum(-1, keepdims=True), v)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    np.testing.assert_allclose(attention(f32(q), f32(k), f32(v), None, None), expected,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('lead', [(1, 3), (2, 3), (3,)])
def test_whole_attention_folds_unit_leading_axes_and_equals_the_formula(lead):
    """Whole attention without bias or mask folds its heads-first leading axes into one where one
    of several is 1 (batch 1); folded or not, output and gradients equal autodiff of the
    formula, in the caller's shapes."""
    rng = np.random.default_rng(8)
    n, m, heads, hd = 6, 4, 2, 4
    q = jnp.asarray(rng.normal(size=(*lead, n, heads, hd)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(*lead, m, heads, hd)), jnp.float32) for _ in range(2))
    cotangent = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

    def trained(q, k, v):
        out, pullback = jax.vjp(lambda *a: attention(*a, None, None), q, k, v)
        return out, pullback(cotangent)

    out, grads = trained(q, k, v)
    ref_out, ref_pullback = jax.vjp(_formula, q, k, v)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-6)
    for grad, ref in zip(grads, ref_pullback(cotangent)):
        assert grad.shape == ref.shape
        np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-5)
    folded = f'new_sizes=({int(np.prod(lead)) * heads}, {n}, {hd})'
    assert (folded in str(jax.make_jaxpr(trained)(q, k, v))) == (lead == (1, 3))


@pytest.mark.parametrize('chunk_bytes,plan', [
    (2 * 6 * 2 * 5 * 5 * 4, (1, 2)),   # pairs of frames (all their windows and heads)
    (2 * 2 * 5 * 5 * 4, (2, 2)),       # pairs of windows
    (5 * 5 * 4, (3, 1)),               # single heads
])
@pytest.mark.parametrize('bias_shape,mask_shape', [
    ((2, 5, 5), (6, 1, 5, 5)),     # Video Swin: one bias for every window, a mask per window
    ((4, 1, 2, 5, 5), None),       # TPS: one bias per frame, shared by the windows
    ((6, 2, 5, 5), None),          # a bias per window and head
    (None, None)])                 # ViT: neither
@pytest.mark.parametrize('long_sequences', [False, True])
def test_chunked_attention_and_its_vjp_equal_the_formula(monkeypatch, bias_shape, mask_shape,
                                                         chunk_bytes, plan, long_sequences):
    """On CPU large attention runs in chunks along the outermost axis whose slices fit; forced
    here to chunks of frames, windows or heads, the output and the gradients (q, k, v, bias)
    equal autodiff of the unchunked formula. Sequences counted as long also run their products
    over head_dim d-major (`_over_head_dim`)."""
    rng = np.random.default_rng(6)
    lead, n, heads, hd = (2, 4, 6), 5, 2, 4
    q, k, v = (jnp.asarray(rng.normal(size=(*lead, n, heads, hd)), jnp.float32) for _ in range(3))
    bias = (jnp.zeros((), jnp.float32) if bias_shape is None else
            jnp.asarray(rng.normal(size=bias_shape), jnp.float32))
    mask = (None if mask_shape is None else
            jnp.asarray(np.where(rng.random(mask_shape) < 0.3, -100.0, 0.0), jnp.float32))
    monkeypatch.setattr(attention_kernel, 'CHUNK_ABOVE', 0)
    monkeypatch.setattr(attention_kernel, 'CHUNK_BYTES', chunk_bytes)
    if long_sequences:
        monkeypatch.setattr(attention_kernel, 'LONG_HEAD_SCORES', 0)
        monkeypatch.setattr(attention_kernel, 'LONG_CHUNK_ABOVE', 0)
    assert attention_kernel._chunk_plan((*lead, heads, n, n)) == plan
    cotangent = jnp.asarray(rng.normal(size=q.shape), jnp.float32)

    def formula(q, k, v, bias):
        s = jnp.einsum('...qhd,...khd->...hqk', q, k) / np.sqrt(hd) + bias
        s = s if mask is None else s + mask
        return jnp.einsum('...hqk,...khd->...qhd', jax.nn.softmax(s, axis=-1), v)

    if bias_shape is None:   # no bias argument at all, as ViT calls it
        out, pullback = jax.vjp(lambda *a: attention(*a, None, mask), q, k, v)
        ref_out, ref_pullback = jax.vjp(lambda *a: formula(*a, bias), q, k, v)
    else:
        out, pullback = jax.vjp(lambda *a: attention(*a, mask), q, k, v, bias)
        ref_out, ref_pullback = jax.vjp(formula, q, k, v, bias)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-6)
    for grad, ref in zip(pullback(cotangent), ref_pullback(cotangent)):
        assert grad.shape == ref.shape
        np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-5)
    step = jax.jit(lambda *a: jax.vjp(lambda *b: attention(*b, bias, mask), *a)[1](cotangent))
    assert ('optimization_barrier' in step.lower(q, k, v).as_text()) == long_sequences


@pytest.mark.parametrize('chunked', [False, True])
def test_segment_mask_is_its_additive_mask(monkeypatch, chunked):
    """A SegmentMask (built inside each chunk) gives the bits of the [..., q, k] array it stands
    for, output and gradients, whole and in chunks."""
    rng = np.random.default_rng(7)
    lead, n, heads, hd = (2, 4, 6), 5, 2, 4
    q, k, v = (jnp.asarray(rng.normal(size=(*lead, n, heads, hd)), jnp.float32) for _ in range(3))
    bias = jnp.asarray(rng.normal(size=(heads, n, n)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, 3, size=(4, 6, n)), jnp.int32)   # shared by the first axis
    segments = attention_kernel.SegmentMask(ids, ids, jnp.float32(-100.0))
    array = jnp.where(ids[..., None, :, None] == ids[..., None, None, :], 0.0, -100.0)
    assert array.shape == (4, 6, 1, n, n)
    np.testing.assert_array_equal(segments.additive(), array)
    if chunked:
        monkeypatch.setattr(attention_kernel, 'CHUNK_ABOVE', 0)
        monkeypatch.setattr(attention_kernel, 'CHUNK_BYTES', 2 * 2 * 5 * 5 * 4)
    cotangent = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
    out, pullback = jax.vjp(lambda *a: attention(*a, segments), q, k, v, bias)
    ref, ref_pullback = jax.vjp(lambda *a: attention(*a, array), q, k, v, bias)
    np.testing.assert_array_equal(out, ref)
    jax.tree.map(np.testing.assert_array_equal, pullback(cotangent), ref_pullback(cotangent))


@pytest.mark.parametrize('chunk_bytes', [None, 2 * 2 * 5 * 5 * 4, 5 * 5 * 4])  # windows, heads
def test_packed_attention_is_attention_of_its_parts(monkeypatch, chunk_bytes):
    """One packed [..., length, 3, heads, head_dim] projection (sliced by each chunk) gives the bits
    of `attention` on its query, key and value, output and gradients, whole and in chunks."""
    rng = np.random.default_rng(8)
    lead, n, heads, hd = (2, 4, 6), 5, 2, 4
    qkv = jnp.asarray(rng.normal(size=(*lead, n, 3, heads, hd)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(heads, n, n)), jnp.float32)
    ids = jnp.asarray(rng.integers(0, 3, size=(4, 6, n)), jnp.int32)
    mask = attention_kernel.SegmentMask(ids, ids, jnp.float32(-100.0))
    if chunk_bytes:
        monkeypatch.setattr(attention_kernel, 'CHUNK_ABOVE', 0)
        monkeypatch.setattr(attention_kernel, 'CHUNK_BYTES', chunk_bytes)
    # XLA's path (the native kernel's eval is checked against the formula on its own, below).
    monkeypatch.setattr(native, 'window_attention_available', lambda: False)
    cotangent = jnp.asarray(rng.normal(size=(*lead, n, heads, hd)), jnp.float32)
    out, pullback = jax.vjp(lambda *a: attention_kernel.packed_attention(*a, mask), qkv, bias)
    ref, ref_pullback = jax.vjp(lambda *a: attention(*a, mask),
                                *(qkv[..., i, :, :] for i in range(3)), bias)
    np.testing.assert_array_equal(out, ref)
    dqkv, dbias = pullback(cotangent)
    *ref_dqkv, ref_dbias = ref_pullback(cotangent)
    np.testing.assert_array_equal(dqkv, jnp.stack(ref_dqkv, axis=-3))
    np.testing.assert_array_equal(dbias, ref_dbias)
    np.testing.assert_array_equal(
        dot_product_attention(qkv, bias=bias, mask=mask), ref)


@pytest.mark.parametrize('lead,n,heads,head_dim,bias_lead,masked', [
    ((1, 2, 3), 49, 3, 32, (1, 1), False),   # a bias shared by the windows
    ((2, 4, 3), 49, 2, 32, (4, 1), True),    # TPS: a bias per frame, shifted windows' mask
    ((2,), 7, 2, 8, (), False),              # fewer tokens than one vector or one tile
    ((1, 1), 33, 1, 20, (1,), True),         # head_dim not a multiple of 16
    ((3,), 18, 2, 64, (), False)])
def test_native_window_attention_is_the_textbook_formula(lead, n, heads, head_dim, bias_lead,
                                                         masked, native_build):
    """Eval of Video Swin's and TPS's form of attention (packed float32 qkv, a bias shared by the
    windows or one per frame, no mask or the shifted windows' regions) runs as the native kernel
    on CPU and gives a float64 numpy softmax(q k^T / sqrt(d) + bias + mask) v to float32 rounding,
    as XLA's kernels do, in each build. (Official parity through it: tests/test_video_swin.py.)"""
    rng = np.random.default_rng(12)
    qkv = rng.normal(size=(*lead, n, 3, heads, head_dim))
    bias = rng.normal(size=(*bias_lead, heads, n, n))
    ids = rng.integers(0, 3, size=(*lead[1:], n))
    q, k, v = (qkv[..., i, :, :] for i in range(3))
    s = np.einsum('...qhd,...khd->...hqk', q, k) / np.sqrt(head_dim) + bias
    if masked:
        s = s + np.where(ids[..., None, :, None] == ids[..., None, None, :], 0.0, -100.0)
    p = np.exp(s - s.max(-1, keepdims=True))
    expected = np.einsum('...hqk,...khd->...qhd', p / p.sum(-1, keepdims=True), v)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    ids = jnp.asarray(ids, jnp.int32)
    mask = attention_kernel.SegmentMask(ids, ids, jnp.float32(-100.0)) if masked else None
    attend = lambda x, b: dot_product_attention(x, bias=b, mask=mask)
    evaluate = steps.jit_forward(attend)
    assert f'{native.TARGET}_{native_build}' in evaluate.lower(f32(qkv), f32(bias)).as_text()
    out = evaluate(f32(qkv), f32(bias))
    xla = attention_with_weights(*(f32(x) for x in (q, k, v)),
                                 bias=f32(bias) + (mask.additive() if masked else 0))[0]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=2e-6)
    assert np.abs(np.asarray(out) - expected).max() <= 2 * np.abs(np.asarray(xla) - expected).max()
    # What the report counts as executed: the kernel's two products, as XLA's would be.
    count = lambda f: report.count_macs(jax.make_jaxpr(f)(f32(qkv), f32(bias)).jaxpr)['macs']
    assert count(attend) == count(lambda x, b: attention_with_weights(
        *(x[..., i, :, :] for i in range(3)), bias=b)[0])


def test_native_window_attention_is_left_where_it_does_not_apply():
    """Separate q/k/v, bfloat16, head_dim over 64, a bias varying along two window axes, a mask
    whose ids are not given per window, several devices or the train step's forward keep XLA's
    kernels."""
    rng = np.random.default_rng(13)
    qkv = jnp.asarray(rng.normal(size=(2, 3, 9, 3, 2, 8)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(2, 9, 9)), jnp.float32)
    layout = attention_kernel._native_window_attention_layout
    ids = jnp.zeros((3, 9), jnp.int32)
    segments = lambda q, k: attention_kernel.SegmentMask(q, k, jnp.float32(-100.0))
    if native.window_attention_available():
        assert layout(qkv, bias, segments(ids, ids)) is not None
    assert layout(qkv, bias, segments(ids[:2], ids[:2])) is None
    assert layout(tuple(qkv[..., i, :, :] for i in range(3)), bias, None) is None
    assert layout(qkv.astype(jnp.bfloat16), bias, None) is None
    assert layout(jnp.zeros((2, 9, 3, 1, 80), jnp.float32), jnp.zeros((1, 9, 9)), None) is None
    assert layout(qkv, jnp.zeros((2, 3, 2, 9, 9)), None) is None
    with backend.accelerator_forms():
        assert layout(qkv, bias, None) is None
    with mock.patch.object(jax, 'device_count', lambda: 8):
        assert layout(qkv, bias, None) is None
    train_forward = jax.make_jaxpr(lambda x: jax.vjp(
        lambda y: dot_product_attention(y, bias=bias), x)[0])(qkv)
    assert native.TARGET not in str(train_forward)


@pytest.fixture
def fresh_native_state():
    native.window_attention_build.cache_clear()
    yield
    native.window_attention_build.cache_clear()


def test_native_kernel_is_optional(monkeypatch, tmp_path, caplog, fresh_native_state):
    """`VTX_NATIVE_KERNELS=0` turns the kernel off and a value it does not know is refused, naming
    it; a compiler that fails leaves the kernel off with one warning naming the source and the
    compiler, and no library in the cache; either way eval runs on XLA's kernels."""
    monkeypatch.setenv('VTX_CACHE_DIR', str(tmp_path))
    monkeypatch.setenv('VTX_NATIVE_KERNELS', '0')
    assert not native.window_attention_available()
    qkv = jnp.ones((2, 9, 3, 2, 8), jnp.float32)
    bias = jnp.zeros((2, 9, 9), jnp.float32)
    program = steps.jit_forward(lambda x: dot_product_attention(x, bias=bias)).lower(qkv).as_text()
    assert native.TARGET not in program
    native.window_attention_build.cache_clear()
    monkeypatch.setenv('VTX_NATIVE_KERNELS', 'sse')
    with pytest.raises(VtxError, match="VTX_NATIVE_KERNELS='sse': expected 0 .*: avx512, avx2"):
        native.window_attention_build()
    monkeypatch.setenv('VTX_NATIVE_KERNELS', '1')
    monkeypatch.setenv('CXX', 'false')
    with caplog.at_level('WARNING', logger=native.__name__):
        assert not native.window_attention_available()
    if native._wanted_build():   # else it stops before compiling
        assert 'window_attention.cc with false failed' in caplog.text
        assert not list(tmp_path.rglob('*.so'))


def test_chunk_loops_cover_a_count_of_chunks_that_the_unroll_does_not_divide(monkeypatch):
    """The chunk loops run CHUNK_UNROLL chunks an iteration; with 3 chunks the one left over still
    runs, forward and backward: output and gradients equal autodiff of the formula."""
    rng = np.random.default_rng(10)
    q, k, v = (jnp.asarray(rng.normal(size=(3, 5, 2, 4)), jnp.float32) for _ in range(3))
    monkeypatch.setattr(attention_kernel, 'CHUNK_ABOVE', 0)
    monkeypatch.setattr(attention_kernel, 'CHUNK_BYTES', 2 * 5 * 5 * 4)
    plan = attention_kernel._chunk_plan((3, 2, 5, 5))
    assert attention_kernel._chunk_count((3, 2, 5, 5), plan) % attention_kernel.CHUNK_UNROLL
    cotangent = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
    out, pullback = jax.vjp(lambda *a: attention(*a, None, None), q, k, v)
    ref_out, ref_pullback = jax.vjp(_formula, q, k, v)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-6)
    for grad, ref in zip(pullback(cotangent), ref_pullback(cotangent)):
        np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-5)


def test_which_attention_runs_in_chunks():
    """The measured rule (see CHUNK_ABOVE): on CPU, long sequences (Video Swin's 392-token
    windows) chunk from 16 MiB of scores, in chunks of whole heads; ViT's 197 tokens stay whole
    up to 64 MiB; nothing chunks under `backend.accelerator_forms` (the accelerator memory
    table)."""
    assert attention_kernel._chunk_plan((1, 2, 64, 3, 392, 392)) == (2, 2)    # Swin-T stage 1
    assert attention_kernel._chunk_plan((1, 2, 4, 12, 392, 392)) == (3, 6)    # stage 3
    assert attention_kernel._chunk_plan((1, 2, 1, 24, 392, 392)) == (3, 6)    # stage 4, 28 MiB
    assert attention_kernel._chunk_plan((16, 12, 197, 197)) is None           # XViT-B, 28 MiB
    assert attention_kernel._chunk_plan((64, 12, 197, 197)) == (0, 2)         # 114 MiB
    with backend.accelerator_forms():
        assert attention_kernel._chunk_plan((1, 2, 64, 3, 392, 392)) is None


def test_which_eval_attention_runs_in_query_rows():
    """The measured rule (see `_query_rows`): MViT's pooled attention, whole in `_chunk_plan`
    because one head's scores exceed a chunk, runs its eval in query rows from the same threshold
    (MViT-B 16x224 blocks 0-3), in chunks of about CHUNK_BYTES; smaller scores, attention that
    `_chunk_plan` loops over and anything under `backend.accelerator_forms` do not."""
    assert attention_kernel._chunk_plan((1, 1, 25089, 393)) is None
    assert attention_kernel._query_rows((1, 1, 25089, 393)) == 2509      # MViT-B block 0, 39 MB
    assert attention_kernel._query_rows((1, 2, 6273, 1569)) == 331       # block 1, 79 MB
    assert attention_kernel._query_rows((1, 2, 6273, 393)) == 1255       # block 2, 20 MB
    assert attention_kernel._query_rows((1, 4, 1569, 393)) is None       # blocks 4-13, 10 MB
    assert attention_kernel._query_rows((1, 2, 64, 3, 392, 392)) is None  # Swin-T, `_chunk_plan`
    with backend.accelerator_forms():
        assert attention_kernel._query_rows((1, 1, 25089, 393)) is None


@pytest.mark.parametrize('length', [12, 13])   # whole chunks of rows; a shorter one after
def test_eval_in_query_rows_equals_the_forward_the_train_step_runs(monkeypatch, length):
    """Eval of attention forced into chunks of 3 query rows equals the VJP's forward, which runs
    whole and keeps the weights, up to float32 rounding (XLA:CPU compiles the products of a chunk
    and of the whole separately), and the formula."""
    rng = np.random.default_rng(8)
    q = jnp.asarray(rng.normal(size=(2, length, 2, 4)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, 5, 2, 4)), jnp.float32) for _ in range(2))
    monkeypatch.setattr(attention_kernel, 'LONG_HEAD_SCORES', 0)
    monkeypatch.setattr(attention_kernel, 'LONG_CHUNK_ABOVE', 0)
    # One head's scores (length x 5) exceed a chunk; 3 rows of every head and batch fit one.
    monkeypatch.setattr(attention_kernel, 'CHUNK_BYTES', 200)
    scores_shape = (2, 2, length, 5)
    assert attention_kernel._chunk_plan(scores_shape) is None
    assert attention_kernel._query_rows(scores_shape) == 3
    evaluate = jax.jit(lambda q: attention(q, k, v, None, None))
    train_forward = jax.jit(lambda q: jax.vjp(lambda q: attention(q, k, v, None, None), q)[0])
    assert 'while' in evaluate.lower(q).as_text()                # the loop over rows
    assert 'while' not in train_forward.lower(q).as_text()
    np.testing.assert_allclose(evaluate(q), train_forward(q), rtol=0, atol=1e-6)
    np.testing.assert_allclose(evaluate(q), _formula(q, k, v), rtol=1e-5, atol=1e-6)


def test_long_sequences_in_chunks_run_their_products_d_major():
    """The measured rule (see `_over_head_dim`): Video Swin's 392-token windows run q k^T (and
    dO v^T) from d-major copies, behind an optimization barrier; MViT's pooled attention (whole)
    runs its backward's dO v^T so; ViT's 197 tokens, in chunks or whole, and anything under
    `backend.accelerator_forms` keep the plain products."""
    def barriers(q_shape, k_shape):
        q, k = (jax.ShapeDtypeStruct(shape, jnp.float32) for shape in (q_shape, k_shape))
        train = jax.jit(lambda q, k: jax.grad(lambda q: attention(q, k, k, None, None).sum())(q))
        return train.lower(q, k).as_text().count('optimization_barrier')
    swin = ((1, 2, 64, 392, 3, 32),) * 2                # Video Swin-T stage 1
    assert barriers(*swin) == 2                         # forward and backward, once per chunk loop
    assert barriers((64, 197, 12, 64), (64, 197, 12, 64)) == 0                 # ViT, in chunks
    assert attention_kernel._chunk_plan((64, 12, 197, 197)) is not None
    assert barriers((8, 197, 12, 64), (8, 197, 12, 64)) == 0                   # ViT, whole
    assert attention_kernel._chunk_plan((8, 12, 197, 197)) is None
    assert barriers((1, 25088, 1, 96), (1, 392, 1, 96)) == 1                    # MViT-B block 0
    with backend.accelerator_forms():
        assert barriers(*swin) == 0
        assert barriers((1, 25088, 1, 96), (1, 392, 1, 96)) == 0


@pytest.mark.parametrize('shape,target', [
    ((2, 3, 4, 5, 6), (1, 1, 4, 5, 6)),          # Video Swin: one bias for every window
    ((2, 16, 3, 2, 5, 5), (1, 16, 1, 2, 5, 5)),  # TPS: one bias per frame
    ((3, 4), (3, 4))])                           # nothing broadcast
def test_sum_to_shape_sums_over_the_broadcast_axes(shape, target):
    x = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
    axes = tuple(i for i, (s, t) in enumerate(zip(shape, target)) if t == 1 and s != 1)
    out = sum_to_shape(x, target)
    assert out.shape == target
    np.testing.assert_allclose(out, jnp.sum(x, axis=axes, keepdims=True), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- pooling

@pytest.mark.parametrize('kernel,strides', [((3, 3, 3), (1, 1, 1)), ((3, 3, 3), (1, 2, 2)),
                                            ((3, 3, 3), (2, 4, 4)), ((1, 3, 3), (1, 8, 8)),
                                            ((3, 3, 3), (1, 8, 8))])
def test_shifted_sum_conv_is_the_depthwise_convolution(kernel, strides):
    """Same parameters as nn.Conv's own convolution, the same output and gradients up to float
    rounding."""
    channels = 5
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, 9, 8, channels)), jnp.float32)

    def conv(**implementation):
        return nn.Conv(channels, kernel, strides=strides, padding=[(k // 2, k // 2) for k in kernel],
                       feature_group_count=channels, use_bias=False, **implementation)

    params = conv().init(jax.random.PRNGKey(0), x)
    shifted_params = conv(conv_general_dilated=shifted_sum_conv).init(jax.random.PRNGKey(0), x)
    jax.tree.map(np.testing.assert_array_equal, shifted_params, params)
    reference, reference_vjp = jax.vjp(conv().apply, params, x)
    out, vjp = jax.vjp(conv(conv_general_dilated=shifted_sum_conv).apply, params, x)
    assert out.shape == reference.shape
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)
    # The hand-written backward against the convolution's autodiff, for the input and the weights.
    grad = jnp.asarray(np.random.default_rng(4).normal(size=out.shape), jnp.float32)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                 vjp(grad), reference_vjp(grad))


@pytest.mark.parametrize('one_loop', [True, False])   # CPU's single variadic loop; elsewhere
def test_pooling_weight_gradient_against_float64(one_loop):
    """Both ways of summing the weight gradient against numpy in float64, per kernel offset."""
    rng = np.random.default_rng(5)
    kernel, strides, out = (3, 3, 3), (1, 2, 2), (3, 4, 4)
    padded = rng.normal(size=(2, 5, 9, 9, 6)).astype(np.float32)
    grad = rng.normal(size=(2, *out, 6)).astype(np.float32)
    got = _weight_gradient(jnp.asarray(padded), jnp.asarray(grad),
                           jnp.zeros((*kernel, 1, 6), jnp.float32), strides, one_loop=one_loop)
    for offset in np.ndindex(*kernel):
        window = padded[(slice(None), *(slice(k, k + s * (n - 1) + 1, s)
                                        for k, s, n in zip(offset, strides, out)))]
        expected = (window.astype(np.float64) * grad).reshape(-1, 6).sum(0)
        np.testing.assert_allclose(got[offset][0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kernel,strides', [((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (2, 2, 2)),
                                            ((3, 3, 3), (1, 1, 1)), ((1, 3, 3), (1, 4, 4))])
def test_max_pool_is_flax_max_pool_with_its_gradient_to_the_first_maximum(kernel, strides):
    """Small integers make ties common: a gradient routed to another maximum of a window than
    XLA's select_and_scatter (the first in scan order) would be off by whole cotangents."""
    x = jnp.asarray(np.random.default_rng(6).integers(0, 4, size=(2, 5, 7, 8, 3)), jnp.float32)
    padding = [(k // 2, k // 2) for k in kernel]
    reference, reference_vjp = jax.vjp(
        lambda a: nn.max_pool(a, kernel, strides=strides, padding=padding), x)
    out, vjp = jax.vjp(lambda a: max_pool(a, kernel, strides, padding), x)
    np.testing.assert_array_equal(out, reference)
    grad = jnp.asarray(np.random.default_rng(7).normal(size=out.shape), jnp.float32)
    # Not bitwise: where windows overlap, an input's gradients are summed in another order.
    np.testing.assert_allclose(vjp(grad)[0], reference_vjp(grad)[0], rtol=1e-6, atol=1e-6)


def test_shifted_sum_conv_refuses_a_dense_convolution():
    x, w = jnp.zeros((1, 4, 4, 4, 3)), jnp.zeros((3, 3, 3, 3, 3))
    with pytest.raises(VtxError, match='depthwise'):
        shifted_sum_conv(x, w, (1, 1, 1), [(1, 1)] * 3, feature_group_count=1)


# --------------------------------------------------------------------------- patch embeddings

@pytest.mark.parametrize('shape,kernel,strides,padding', [
    ((2, 5, 10, 9, 3), (2, 4, 4), (2, 4, 4), 'VALID'),               # Video Swin/TPS; remainders
    ((2, 9, 10, 3), (4, 4), (4, 4), 'VALID'),                         # the ViTs' 2D patches
    ((1, 4, 13, 12, 3), (3, 7, 7), (2, 4, 4), [(1, 1), (3, 3), (3, 3)]),   # MViT: overlapping
    ((1, 5, 9, 8, 2), (3, 5, 2), (2, 3, 2), [(1, 0), (2, 3), (0, 1)])])    # uneven padding
def test_patch_embedding_matmul_is_the_convolution(shape, kernel, strides, padding):
    """nn.Conv with `patches.conv_general_dilated`: the same parameters as with its own
    convolution, the same output and gradients (input and parameters) up to float rounding, and
    on CPU no convolution left in the program."""
    x = jnp.asarray(np.random.default_rng(6).normal(size=shape), jnp.float32)

    def conv(**implementation):
        return nn.Conv(5, kernel, strides=strides, padding=padding, **implementation)

    params = conv().init(jax.random.PRNGKey(0), x)
    as_matmul = conv(conv_general_dilated=patches.conv_general_dilated)
    jax.tree.map(np.testing.assert_array_equal, as_matmul.init(jax.random.PRNGKey(0), x), params)
    reference, reference_vjp = jax.vjp(conv().apply, params, x)
    out, vjp = jax.vjp(as_matmul.apply, params, x)
    assert out.shape == reference.shape
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)
    grad = jnp.asarray(np.random.default_rng(7).normal(size=out.shape), jnp.float32)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                 vjp(grad), reference_vjp(grad))
    assert 'conv_general_dilated' not in str(jax.make_jaxpr(as_matmul.apply)(params, x))
    with backend.accelerator_forms():   # accelerators run the convolution itself
        assert 'conv_general_dilated' in str(jax.make_jaxpr(as_matmul.apply)(params, x))


def test_patch_embedding_matmul_refuses_what_it_does_not_compute():
    x, w = jnp.zeros((1, 4, 8, 8, 4)), jnp.zeros((2, 2, 2, 2, 4))
    with pytest.raises(VtxError, match='ungrouped'):
        patches.conv_general_dilated(x, w, (2, 2, 2), 'VALID', feature_group_count=2)
    with pytest.raises(VtxError, match='smaller than the window'):
        patches.patch_matmul(jnp.zeros((1, 3, 3, 2)), jnp.zeros((4, 4, 2, 3)), (4, 4),
                             ((0, 0),) * 2)


# --------------------------------------------------------------------------- projections

@pytest.mark.parametrize('with_bias', [False, True])
def test_fused_projections_equal_the_separate_ones(with_bias):
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 7, 6)), jnp.float32)
    kernels = [jnp.asarray(rng.normal(size=(6, 8)), jnp.float32) for _ in range(3)]
    biases = [jnp.asarray(rng.normal(size=(8,)), jnp.float32) if with_bias else None
              for _ in range(3)]
    separate = dense_projections(x, kernels, biases)
    fused = dense_projections(x, kernels, biases, fused=True)
    for f, s, k, b in zip(fused, separate, kernels, biases):
        np.testing.assert_allclose(s, x @ k + (0 if b is None else b), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(f, s, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- top-k

def test_hard_top_k_keeps_the_k_largest_in_ascending_order():
    scores = jnp.array([[0.1, 0.9, 0.3, 0.8, 0.5], [1.0, 0.0, 0.2, 0.4, 0.3]])
    np.testing.assert_array_equal(hard_top_k(scores, 3), [[1, 3, 4], [0, 3, 4]])


def test_perturbed_top_k_forward_and_backward_follow_the_estimator():
    rng = np.random.default_rng(0)
    scores = rng.uniform(size=(2, 6)).astype(np.float32)
    noise = rng.standard_normal((2, 50, 6)).astype(np.float32)
    sigma, k = 0.3, 2
    cotangent = rng.standard_normal((2, k, 6)).astype(np.float32)
    # Independent numpy computation of the official forward and custom backward.
    perturbed = scores[:, None] + sigma * noise
    idx = np.sort(np.argsort(-perturbed, axis=-1)[..., :k], axis=-1)
    one_hot = np.eye(6, dtype=np.float32)[idx]                     # b n k d
    expected_forward = one_hot.mean(1)
    expected_grad = np.einsum('bkd,bkd->bd', cotangent,
                              np.einsum('bnkd,bnd->bkd', one_hot, noise) / 50 / sigma)
    out, vjp = jax.vjp(lambda s: perturbed_top_k(s, jnp.asarray(noise), jnp.float32(sigma), k),
                       jnp.asarray(scores))
    np.testing.assert_allclose(out, expected_forward, atol=1e-6)
    np.testing.assert_allclose(vjp(jnp.asarray(cotangent))[0], expected_grad, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(
        perturbed_top_k(jnp.asarray(scores), jnp.asarray(noise), jnp.float32(sigma), k), out)


def test_perturbed_top_k_at_zero_sigma_is_hard_top_k_with_zero_gradient():
    scores = jax.random.uniform(jax.random.PRNGKey(0), (3, 8))
    noise = jax.random.normal(jax.random.PRNGKey(1), (3, 500, 8))
    indicators, vjp = jax.vjp(lambda s: perturbed_top_k(s, noise, jnp.float32(0.0), 3), scores)
    np.testing.assert_array_equal(indicators, jax.nn.one_hot(hard_top_k(scores, 3), 8))
    grad = vjp(jnp.ones_like(indicators))[0]
    assert np.all(np.isfinite(grad)) and not np.any(grad)


def test_gelu_is_the_exact_erf_form_in_value_and_gradient():
    """vtx's GELU (own float32 erf, so that exports hold no `chlo.erf` composite) against float64
    x Phi(x) and its derivative Phi(x) + x phi(x)."""
    import math
    from vtx.models.layers import gelu
    x = np.linspace(-9, 9, 3601).astype(np.float32)
    xd = x.astype(np.float64)
    phi = np.exp(-xd ** 2 / 2) / math.sqrt(2 * math.pi)
    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in xd])
    value = np.asarray(jax.jit(gelu)(jnp.asarray(x)), np.float64)
    slope = np.asarray(jax.jit(jax.vmap(jax.grad(gelu)))(jnp.asarray(x)), np.float64)
    np.testing.assert_allclose(value, xd * cdf, rtol=0, atol=2e-6)
    np.testing.assert_allclose(slope, cdf + xd * phi, rtol=0, atol=2e-6)


@pytest.mark.parametrize('shape', [(1, 3, 4, 8), (1, 6, 8), (2, 3, 8), (5, 8)])
@pytest.mark.parametrize('kind', ['layer_norm', 'dense'])
def test_row_modules_equal_flax_in_value_gradient_and_parameters(kind, shape):
    """vtx's LayerNorm flattens rows that carry a size-1 axis ((1, ...) here) and its Dense all
    rows of inputs with leading axes; either way each is its flax module: the same parameters,
    outputs and gradients."""
    from vtx.models.layers import dense, layer_norm
    ours, theirs, flattens = {
        'layer_norm': (layer_norm(1e-5), nn.LayerNorm(epsilon=1e-5),
                       len(shape) > 2 and shape[0] == 1),
        'dense': (dense(6, (None, None)), nn.Dense(6), len(shape) > 2)}[kind]
    x = jax.random.normal(jax.random.PRNGKey(0), shape) * 3 + 1
    params = ours.init(jax.random.PRNGKey(1), x)
    assert jax.tree.map(jnp.shape, nn.unbox(params)) == jax.tree.map(
        jnp.shape, theirs.init(jax.random.PRNGKey(1), x))
    params = jax.tree.map(lambda p: p + jax.random.uniform(jax.random.PRNGKey(2), p.shape),
                          nn.unbox(params))
    weights = jax.random.normal(jax.random.PRNGKey(3), theirs.apply(params, x).shape)

    def loss(module, params, x):
        return (module.apply(params, x) * weights).sum()

    np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), atol=1e-5)
    for ours_grad, flax_grad in zip(jax.tree.leaves(jax.grad(loss, (1, 2))(ours, params, x)),
                                    jax.tree.leaves(jax.grad(loss, (1, 2))(theirs, params, x))):
        np.testing.assert_allclose(ours_grad, flax_grad, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(lambda x: ours.apply(params, x))(x))
    flattened = f'new_sizes=({int(np.prod(shape[:-1]))}, {shape[-1]})'
    assert (flattened in jaxpr) == flattens, jaxpr
