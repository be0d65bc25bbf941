"""What the subcommands share: option types, the parser class and the error report.

The option types are argparse ``type=`` functions that check one flag with the
package's own validators (:mod:`tfkernels._validate`), so the API and the command
line apply one piece of code per rule; a bad value is an ``argparse.ArgumentTypeError``
that argparse reports as ``argument --flag: ...``, exit status 2.

Integer flags take an integer written in decimal, with optional ``_`` separators or
in exponent notation when the value is a whole number (``1000``, ``1_000``, ``1e3``);
``2.5`` is an error naming the flag. Negative numbers (``-1``, ``-1e-6``, ``-inf``) are
read as values, never as options, so that ``--eps -1e-6`` says what is wrong with it.

Imports only :mod:`tfkernels._validate` (NumPy), so that ``--help`` stays fast.
"""

import argparse
import decimal
import re
import sys

from .. import _validate as v

#: Exit status of an expected error: a bad flag or input, or a study that failed for a
#: reason it reports (a blow-up, an unreachable scheduler, an unwritable folder).
EXIT_ERROR = 2
#: Exit status of an unexpected exception (a bug: please report it with ``--debug``).
EXIT_INTERNAL = 1

#: The errors a subcommand reports on one line (exit status 2): invalid arguments,
#: numerical failures, files, optional dependencies that are missing, and a study too
#: large for the machine's memory.
EXPECTED = (TypeError, ValueError, FloatingPointError, OSError, ImportError, MemoryError)

#: Words that argparse must read as (negative) numbers, not as options: Python 3.10-3.12
#: recognise only ``-1`` and ``-1.5``, not ``-1e-6`` or ``-inf``.
NEGATIVE_NUMBER = re.compile(
    r"^-(\d[\d_]*\.?[\d_]*|\.\d[\d_]*)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE
)

#: Integers written with more digits than this are out of every flag's range (and are
#: not expanded: ``1e1000000`` would be a million-digit int).
_MAX_DIGITS = 40


def epilog(*extra):
    """The ``--help`` text of the exit statuses: the common ones and ``extra``, pairs
    ``(status, meaning)`` of one subcommand."""
    codes = [
        (0, "success"),
        (EXIT_INTERNAL, "an unexpected error (a bug), one line"),
        (
            EXIT_ERROR,
            "a bad option or input, or an expected error during the run (a numerical "
            "blow-up, an unwritable folder), one line",
        ),
        *extra,
        (130, "interrupted (Ctrl-C)"),
    ]
    return (
        "exit status: "
        + "; ".join(f"{code} {meaning}" for code, meaning in sorted(codes))
        + ". --debug shows the traceback instead. Integer flags also take 1_000 and 1e3; "
        "negative numbers are values (--eps -1e-6 or --eps=-1e-6)."
    )


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose error is one line, ``<prog>: error: <message>``
    (exit status 2), and that reads negative numbers such as ``-1e-6`` as values."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message):
        """Print ``<prog>: error: <message>`` on one line and exit with status 2."""
        self.exit(EXIT_ERROR, f"{self.prog}: error: {one_line(message)}\n")


def add_debug(parser, default=False):
    """Add ``--debug`` (tracebacks instead of one-line errors) to ``parser``."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="on an error, show the full traceback instead of a one-line message",
    )


def one_line(message):
    """``message`` on a single line (its lines joined by ``; ``)."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return "; ".join(lines)


def _reword(err, flag):
    """The message of a validator's error for ``flag``, without a leading ```flag``` (argparse
    already prefixes ``argument flag:``)."""
    msg = str(err)
    prefix = f"`{flag}` "
    return msg[len(prefix) :] if msg.startswith(prefix) else msg


def _checked(flag, check):
    """Run ``check()``; turn a validator's TypeError or ValueError into an
    ArgumentTypeError for ``flag``."""
    try:
        return check()
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(_reword(err, flag)) from None


def parse_integer(text):
    """The integer that ``text`` writes (``12``, ``1_000``, ``1e6``, ``2.5e3``).

    Raises
    ------
    ValueError
        ``text`` is not a number, not finite, not a whole number, or has more than 40
        digits.
    """
    try:
        x = decimal.Decimal(text.strip().replace("_", ""))
    except (decimal.InvalidOperation, ValueError):
        raise ValueError(f"not an integer: {text!r}") from None
    if not x.is_finite():
        raise ValueError(f"must be a finite integer, got {text!r}")
    if x.adjusted() >= _MAX_DIGITS:
        raise ValueError(f"{text!r} is too large (more than {_MAX_DIGITS} digits)")
    if x != x.to_integral_value():
        raise ValueError(f"must be an integer, got {text!r}")
    return int(x)


def integer(flag, minimum=1, maximum=None):
    """argparse type of an integer flag in ``[minimum, maximum]`` (``check_int``)."""

    def convert(text):
        n = _checked(flag, lambda: parse_integer(text))
        return _checked(flag, lambda: v.check_int(flag, n, minimum=minimum, maximum=maximum))

    convert.flag = flag
    return convert


def seed(flag="--seed", maximum=v.MAX_SEED):
    """argparse type of a seed: an integer in ``[0, maximum]`` (``check_seed``)."""

    def convert(text):
        n = _checked(flag, lambda: parse_integer(text))
        if maximum == v.MAX_SEED:
            return _checked(flag, lambda: v.check_seed(flag, n))
        return _checked(flag, lambda: v.check_int(flag, n, minimum=0, maximum=maximum))

    convert.flag = flag
    return convert


def real(flag, minimum=None, strict=False):
    """argparse type of a finite real flag ``>= minimum`` (``> minimum`` if strict)."""

    def convert(text):
        try:
            x = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        return _checked(flag, lambda: v.check_float(flag, x, minimum=minimum, strict=strict))

    convert.flag = flag
    return convert


def integers(flag, minimum=1):
    """argparse type of a comma list of integers ``>= minimum`` (at least one)."""

    def convert(text):
        words = [w for w in text.split(",") if w.strip()]
        if not words:
            raise argparse.ArgumentTypeError(
                f"needs a comma-separated list of integers, got {text!r}"
            )
        one = integer(flag, minimum)
        return tuple(one(w) for w in words)

    convert.flag = flag
    return convert


def names(flag, allowed, empty=False):
    """argparse type of a comma list of names from ``allowed`` (``allowed`` may be a
    callable returning them, imported when the flag is given); ``none`` or an empty
    list is the empty tuple when ``empty``, an error otherwise."""

    def convert(text):
        choices = tuple(allowed() if callable(allowed) else allowed)
        values = tuple(w.strip() for w in text.split(",") if w.strip())
        if values in ((), ("none",)):
            if empty:
                return ()
            raise argparse.ArgumentTypeError(
                f"needs at least one of {', '.join(choices)}, got {text!r}"
            )
        bad = [w for w in values if w not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(map(repr, bad))}; choose from {', '.join(choices)}"
            )
        return values

    convert.flag = flag
    return convert


def text(flag):
    """argparse type of a non-empty string flag (leading and trailing blanks removed)."""

    def convert(value):
        value = value.strip()
        if not value:
            raise argparse.ArgumentTypeError("must not be empty")
        return value

    convert.flag = flag
    return convert


def fail(command, err, args=None, message=None):
    """Report the expected error ``err`` of ``tfkernels <command>``; return exit status 2.

    Prints ``tfkernels <command>: error: <message>`` (``message`` or the error's own)
    on one line to stderr; with ``--debug`` (``args.debug``) re-raises ``err``
    instead, with its traceback.
    """
    if getattr(args, "debug", False):
        raise err
    msg = one_line(err if message is None else message) or type(err).__name__
    print(f"tfkernels {command}: error: {msg}", file=sys.stderr)
    return EXIT_ERROR


def crash(command, err, args=None):
    """Report the unexpected exception ``err``; return exit status 1 (with ``--debug``
    re-raise it instead, with its traceback)."""
    if getattr(args, "debug", False):
        raise err
    print(
        f"tfkernels {command}: internal error: {type(err).__name__}: {one_line(err)} "
        "(rerun with --debug for the traceback, and please report it)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL


#: The random-model flags of :func:`add_block_options` and :func:`add_ensemble_options`
#: and their defaults: (attribute, flag, default).
RANDOM_MODEL_DEFAULTS = (
    ("activation", "--activation", "gelu"),
    ("norm", "--norm", "none"),
    ("norm_position", "--norm-position", "pre"),
    ("block", "--block", "parallel"),
    ("bias", "--bias", False),
    ("ensemble", "--ensemble", False),
    ("per_layer", "--per-layer", False),
)
_DEFAULT = {attr: default for attr, _, default in RANDOM_MODEL_DEFAULTS}


def random_flags_given(args):
    """The flags of :data:`RANDOM_MODEL_DEFAULTS` that ``args`` sets away from their
    defaults, in that order."""
    return [flag for attr, flag, default in RANDOM_MODEL_DEFAULTS if getattr(args, attr) != default]


def add_block_options(group):
    """``--activation``, ``--norm``, ``--norm-position``, ``--block`` and ``--bias``: the
    block of a random model (``TransformerParams.random``'s arguments), in the argument
    group ``group``."""
    from ..methods import ACTIVATIONS, BLOCKS, NORM_POSITIONS, NORMS

    group.add_argument(
        "--activation",
        default=_DEFAULT["activation"],
        choices=list(ACTIVATIONS),
        help="FFN activation σ",
    )
    group.add_argument(
        "--norm",
        default=_DEFAULT["norm"],
        choices=list(NORMS),
        help="token norm of each sub-layer (sphere: tokens on the unit sphere)",
    )
    group.add_argument(
        "--norm-position",
        default=_DEFAULT["norm_position"],
        choices=list(NORM_POSITIONS),
        help="pre: sub-layers see normed tokens (GPT-2); post: the state is normed after "
        "each sub-step (BERT); tangent: the sphere's projected field (--norm sphere)",
    )
    group.add_argument(
        "--block",
        default=_DEFAULT["block"],
        choices=list(BLOCKS),
        help="parallel: one step of attention + FFN; sequential: attention, then FFN; "
        "strang: half FFN, attention, half FFN",
    )
    group.add_argument("--bias", action="store_true", help="attention biases bq, bk, bv, bo")


def check_block_args(args):
    """The combinations of :func:`add_block_options`' flags (ValueError naming them)."""
    if args.norm_position == "tangent" and args.norm != "sphere":
        raise ValueError("`--norm-position` tangent needs `--norm` sphere")
    if args.norm == "none" and args.norm_position != "pre":
        raise ValueError(f"`--norm-position` {args.norm_position} needs a `--norm`")


def block_kwargs(args):
    """The ``TransformerParams.random`` arguments of :func:`add_block_options`' flags."""
    return dict(
        activation=args.activation,
        norm=None if args.norm == "none" else args.norm,
        norm_position=args.norm_position,
        block=args.block,
        bias=args.bias,
    )


def add_ensemble_options(group):
    """``--ensemble`` and ``--per-layer`` (a :class:`~tfkernels.WeightEnsemble` instead of
    one random model) in the argument group ``group`` of a random model."""
    group.add_argument(
        "--ensemble",
        action="store_true",
        help="every trajectory draws its own random weights (tfkernels.WeightEnsemble: "
        "trajectory i runs member i, keyed by (--seed, i), bit-identical whatever the "
        "chunking, threads or workers): statistics over random initialisations instead "
        "of one model",
    )
    group.add_argument(
        "--per-layer",
        action="store_true",
        help="with --ensemble: a fresh weight draw before every layer (a non-autonomous flow)",
    )


def check_ensemble_args(args):
    """``--per-layer`` needs ``--ensemble`` (ValueError naming both)."""
    if args.per_layer and not args.ensemble:
        raise ValueError("`--per-layer` draws each layer's weights of an `--ensemble`; add it")


def random_model(args, **kwargs):
    """The random model of ``kwargs`` (the arguments of ``TransformerParams.random``):
    a ``WeightEnsemble`` with ``--ensemble`` (``--per-layer``), else one draw."""
    if args.ensemble:
        from ..ensemble import WeightEnsemble

        return WeightEnsemble(**kwargs, per_layer=args.per_layer)
    from ..params import TransformerParams

    return TransformerParams.random(**kwargs)
