"""Data: DMVR-format TFRecord shards and TFDS video datasets read with tf.data (`pipeline`), video
decoding (`video_io`), shard builders (`build_from_*`, `shards`) and the synthetic demo set.

Importing this package loads nothing heavy; TensorFlow comes in through `tf_on_host` with the
modules that need it.
"""
