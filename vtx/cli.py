"""What vtx's command lines share: every command ends quietly when its reader closes stdout
(`command`), and the absl ones (`vtx-train`, `vtx-predict`, `vtx-export`, `vtx-convert`,
`vtx-plot`) take `--config` by zoo name or path and report bad flags in one paragraph (exit
status 2); the argparse ones (`vtx-report`, `vtx-benchmark`) read `--config.a.b=v` overrides
with `parse_arguments`."""
import argparse
import functools
import os
import select
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF is only the input pipeline here

from absl import app, flags  # noqa: E402

from vtx import config as vtx_config  # noqa: E402
from vtx import xla_flags  # noqa: E402
from vtx.errors import VtxError  # noqa: E402


_program = ['vtx']  # the running command's name, for its error lines

# How a shell reports a command that SIGPIPE ended (128 + 13), as `cat file | head` ends `cat`.
CLOSED_STDOUT_STATUS = 141


def summary(doc: str) -> str:
    """A module docstring's first paragraph as one line: an argparse command's description (its
    first line alone may stop mid-sentence)."""
    return ' '.join(doc.split('\n\n')[0].split())


def command(entry):
    """`entry` as a console command that ends quietly, with exit status 141, when whatever reads
    its stdout closes it early (`vtx-zoo list | head -3`). Python ignores SIGPIPE, so the next
    write raises BrokenPipeError instead, and its traceback would end the output. A broken pipe
    that is not stdout's is re-raised."""
    @functools.wraps(entry)
    def run_entry(*args, **kwargs):
        try:
            return entry(*args, **kwargs)
        except BrokenPipeError:
            if not _stdout_closed():
                raise
            # Python flushes stdout once more at exit, which would raise again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(CLOSED_STDOUT_STATUS)
    return run_entry


def number(kind=int, *, minimum=None, maximum=None, above=None):
    """An argparse `type`: the flag's text as `kind` (int or float) with minimum <= value <=
    maximum and value > above (each bound optional); anything else is argparse's one error line,
    naming the flag and what it takes."""
    bounds = [f'{sign} {bound}' for sign, bound in (('>=', minimum), ('>', above), ('<=', maximum))
              if bound is not None]
    expected = ' '.join(['an integer' if kind is int else 'a number', ' and '.join(bounds)]).strip()

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if (value is None or value != value   # NaN
                or (minimum is not None and value < minimum)
                or (maximum is not None and value > maximum)
                or (above is not None and value <= above)):
            raise argparse.ArgumentTypeError(f'expected {expected}, got {text!r}')
        return value
    return parse


def config_overrides(argv):
    """(the `--config.a.b=v` flags of `argv` as {'a.b': v}, the other arguments) for the argparse
    commands; values are Python literals where they parse as one, else strings."""
    import ast
    overrides, rest = {}, []
    for arg in argv:
        if arg.startswith('--config.'):
            key, sep, value = arg[len('--config.'):].partition('=')
            if not sep:
                raise VtxError(f'{arg}: expected --config.FIELD=VALUE')
            try:
                overrides[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                overrides[key] = value
        else:
            rest.append(arg)
    return overrides, rest


def parse_arguments(parser: argparse.ArgumentParser, argv=None):
    """(the arguments `parser` parses, the `--config.a.b=v` overrides) of an argparse command's
    `argv` (default: sys.argv[1:]); a malformed override is one error line naming the command."""
    try:
        overrides, rest = config_overrides(sys.argv[1:] if argv is None else argv)
    except VtxError as e:
        fail(e, parser.prog)
    return parser.parse_args(rest), overrides


@command
def run_restarted(main):
    """Runs an argparse command's `main()` after `xla_flags.restart_with_malloc_tunables()`."""
    xla_flags.restart_with_malloc_tunables()
    main()


def _stdout_closed() -> bool:
    """Whether stdout is a pipe or socket whose reader has gone (poll reports an error on it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or no file behind stdout
        return False
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _flag_value(argv, name: str):
    """The value given to `--name` in `argv` (either spelling), or None."""
    for i, arg in enumerate(argv):
        if arg == f'--{name}' and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f'--{name}='):
            return arg.split('=', 1)[1]
    return None


def resolve_config_flag(argv):
    """`argv` with the value of `--config NAME` / `--config=NAME` replaced by the file it names
    (ml_collections' config flag reads a path); an unknown name exits with one error line."""
    argv = list(argv)
    model = _flag_value(argv, 'model')
    if model:
        from vtx import pretrained
        if not pretrained.is_zoo_name(model):
            fail(f'--model {model}: not a zoo model{pretrained.close_matches_hint(model)} '
                 '(vtx-zoo list shows them all)')
        if _flag_value(argv, 'config') is None:
            argv.insert(1, f'--config={model}')  # the model's own config: overrides apply to it
    for i, arg in enumerate(argv):
        if arg == '--':
            break
        try:
            if arg.startswith('--config='):
                argv[i] = '--config=' + _loadable(arg[len('--config='):])
            elif arg == '--config' and i + 1 < len(argv):
                argv[i + 1] = _loadable(argv[i + 1])
        except VtxError as e:
            fail(e)
    return argv


def _loadable(name_or_path: str) -> str:
    """The config file `name_or_path` means, after running it once: a file that fails to load is
    one error line naming it and the line, not ml_collections' traceback."""
    path = vtx_config.resolve(name_or_path)
    vtx_config.get(path)
    return path


def fail(error, program: str | None = None) -> None:
    """One error line naming the command (`program`, or the one `run` runs), exit status 2."""
    print(f'{program or _program[0]}: error: {error}', file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
    """absl flag parsing, with a bad flag or `--config.*` override reported in one line."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        # ml_collections names an unknown field only by its last part ("'nope'").
        fields = [a.split('=', 1)[0][len('--config.'):] for a in argv[1:]
                  if a.startswith('--config.')]
        if fields and _flag_value(argv, 'config'):
            config = vtx_config.get(_flag_value(argv, 'config'))
            for error in filter(None, (vtx_config.unknown_field(config, f) for f in fields)):
                fail(error)
        detail = ' '.join(str(e).replace('\\n', ' ').replace('\\', '').split())
        detail = detail.replace("''", "'").rstrip("'") if detail.startswith("''") else detail
        if '--config.' in detail:
            detail += " (a --config.* value must have the type of the config's field)"
        fail(f'bad command line: {detail}')


def _print_help(main):
    """The command's docstring and its own flags, on stdout (absl's --help shows only the flags
    of the file named in argv[0], which for a console command is a wrapper with none)."""
    module = main.__module__
    print((sys.modules[module].__doc__ or '').strip() + '\n')
    print(flags.FLAGS.module_help(module))


@command
def run(main, program: str, define_flags=None):
    """Runs an absl `main` as the console command `program` (or its `python -m` module)."""
    xla_flags.restart_with_malloc_tunables()
    _program[0] = program
    if define_flags is not None:
        define_flags()
    if any(arg in ('-h', '--help', '-help', '--helpshort') for arg in sys.argv[1:]):
        _print_help(main)
        sys.exit(0)
    app.run(main, argv=resolve_config_flag(sys.argv), flags_parser=_parse_flags_then_dispatch)


def _parse_flags_then_dispatch(argv):
    """parse_flags, then `xla_flags.dispatch_for_host_memory()`, which imports JAX: only for a
    command line that parses, so that --help and a bad flag answer at once."""
    parsed = parse_flags(argv)
    xla_flags.dispatch_for_host_memory()
    return parsed
