"""vtx: efficient video transformers in JAX/Flax.

    import vtx
    model = vtx.load('swin_tiny_patch244_window877_kinetics400_1k')
    model.predict(['video.mp4'])  # top-5 labels and probabilities under the paper's test protocol
"""
from vtx import xla_flags as _xla_flags

_xla_flags.apply_defaults()  # XLA reads XLA_FLAGS once, when JAX starts its backends


def load(name_or_path: str, **kwargs):
    """A ready model from a zoo name or a vtx checkpoint folder: see `vtx.pretrained.load`."""
    from vtx import pretrained  # importing vtx stays cheap: JAX loads with the first model
    return pretrained.load(name_or_path, **kwargs)
