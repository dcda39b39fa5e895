"""Kernels: the computations that are not "the paper" but how vtx runs it fast or differentiably
(custom VJPs, fused reductions, alternative poolings). Model files call them; they hold no
parameters."""
