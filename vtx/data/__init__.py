"""Input pipelines: DMVR-format TFRecord shards and TFDS video datasets read with tf.data.

TF only feeds the host; the accelerators belong to JAX, so TF is kept off every GPU before any
TF op runs.
"""
import tensorflow as tf

try:
    tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TF was already initialised by the caller; its device choice stands
    pass
