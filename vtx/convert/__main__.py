"""`python -m vtx.convert`: the same as the `vtx-convert` command (vtx/convert/cli.py)."""
from vtx.convert import cli

cli.run()
