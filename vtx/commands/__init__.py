"""The command lines whose libraries load JAX: each module holds a command's help, flags and
`main`, and imports its library only once the command line has parsed, so that `--help` and a
bad flag answer at once instead of after JAX, Flax and orbax have loaded (about a second).
`vtx-train` is `vtx.main`; the data tools and `vtx-zoo` import no JAX to begin with."""
