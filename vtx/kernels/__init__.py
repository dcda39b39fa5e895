"""Kernels: the computations that are not "the paper" but how vtx runs it fast or differentiably
(custom VJPs, fused reductions, alternative poolings). Model files call them; they hold no
parameters.

  attention         the attention every model shares (heads-first products, a hand-written VJP
                    that also sums a window-shared bias's gradient), and the choice of what runs it
  backend           the switch between the kernels' CPU forms and accelerators' forms
  native            vtx's C++ kernels for XLA:CPU (window_attention.cc: Video Swin's and TPS's
                    window attention in eval), built on first use with the host's compiler
  patches           strided convolutions (every family's patch embedding) as one matmul over
                    patches on CPU
  pooling           MViT's pooling conv, and its skip max pool's gradient, by strided slices
                    (`pool_implementation`)
  projection        query/key/value projections fused into one matmul (`fused_qkv`)
  top_k             STTS's hard and perturbed (differentiable) top-k
"""
