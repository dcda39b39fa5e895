"""TensorFlow as the input pipeline's engine on the host, never on an accelerator.

The accelerators belong to JAX, so TF is kept off every GPU before any TF op runs. Every vtx module
that uses TF imports it from here (`from vtx.data.tf_on_host import tf`), and only when it reads
or writes data, so building, converting, reporting and serving a model never load TF.
"""
import tensorflow as tf

try:
    tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TF was already initialised by the caller; its device choice stands
    pass
