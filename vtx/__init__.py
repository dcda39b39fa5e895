"""vtx: efficient video transformers in JAX/Flax.

    import vtx
    model = vtx.load('swin_tiny_patch244_window877_kinetics400_1k')
    model.predict(['video.mp4'])  # top-5 labels and probabilities under the paper's test protocol
"""


def load(name_or_path: str, **kwargs):
    """A ready model from a zoo name or a vtx checkpoint folder: see `vtx.pretrained.load`."""
    from vtx import pretrained  # importing vtx stays cheap: JAX loads with the first model
    return pretrained.load(name_or_path, **kwargs)
