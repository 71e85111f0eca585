"""The one error hierarchy of darknet-sparse.

Every error the library raises on bad input is a :class:`DarknetSparseError`,
and each subclass is also a :class:`ValueError` (or :class:`RuntimeError` for
things that are not the input's fault), so callers can catch either.  The CLI
turns any of them into one ``Error:`` line and exit code 2.
"""


class DarknetSparseError(Exception):
    """Base class of every error darknet-sparse raises on purpose."""


class CfgError(DarknetSparseError, ValueError):
    """A ``.cfg`` file that Darknet would not parse the way we need."""


class WeightsFormatError(DarknetSparseError, ValueError):
    """A ``.weights`` file that does not match its cfg or is damaged."""


class PolicyError(DarknetSparseError, ValueError):
    """A pruning request that cannot be satisfied: a bad level, spec, mode,
    schedule or target, or one the model cannot reach."""


class InputError(DarknetSparseError, ValueError):
    """An input that cannot be used, other than a cfg or weights file: an
    unreadable image, list or labels file, images that do not fit the
    network, or a setting out of its range (a batch, a confidence, a
    number of images)."""


class OutputError(DarknetSparseError, ValueError):
    """An output path that would lose data or cannot be written."""


class ArrayError(DarknetSparseError, ValueError):
    """A call whose arguments do not fit a weights file's arrays: one it does
    not hold or never edits, the wrong number of values, a rank past the end."""


class NoSuchArrayError(ArrayError, KeyError):
    """An array the weights file does not hold (also a :class:`KeyError`)."""

    __str__ = Exception.__str__  # KeyError's would quote the message


class BindingError(DarknetSparseError, RuntimeError):
    """The compiled Darknet binding is missing or Darknet failed inside it."""


class DarknetRunError(DarknetSparseError, RuntimeError):
    """The patched ``darknet`` binary failed or printed something unexpected."""


class BuildError(DarknetSparseError, RuntimeError):
    """Building the patched Darknet or the binding (``darknet-sparse build``) failed."""
