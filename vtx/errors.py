"""The one exception type vtx raises for bad user input (config, paths, data, checkpoints).

`vtx.main` prints these as a single paragraph without a traceback; anything else is a bug.
"""


class VtxError(ValueError):
    """Bad input: the message names the field, file or flag and says what was expected."""
