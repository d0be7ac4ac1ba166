"""The one exception type users see.

A :class:`LayerscopeError` carries a one-line message that names what was wrong and what to do.
The CLI prints it as ``error: <message>`` on stderr and exits with code 2, without a traceback
(``--debug`` shows one).

Example:
    >>> from layerscope.errors import LayerscopeError
    >>> str(LayerscopeError("unknown granularity 'x'; use one of: blocks, sublayers, modules"))
    "unknown granularity 'x'; use one of: blocks, sublayers, modules"
"""

from __future__ import annotations


class LayerscopeError(Exception):
    """A user-facing error whose message is one line: the problem and the fix.

    Example:
        >>> str(LayerscopeError("unknown method 'x';   use pca or tsne"))
        "unknown method 'x'; use pca or tsne"
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class LayerscopeIndexError(LayerscopeError, IndexError):
    """An index out of range (``layers[10]`` on a 6-layer model): a :class:`LayerscopeError` with
    the same one-line message that is also an ``IndexError``, so Python idioms keep working.

    Example:
        >>> try:
        ...     raise LayerscopeIndexError("layer 10 is out of range: Net has 6 blocks (0-5)")
        ... except IndexError as exc:
        ...     print(exc)
        layer 10 is out of range: Net has 6 blocks (0-5)
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its class name when the message is empty.

    Example:
        >>> first_line(RuntimeError("out of memory\\ntried to allocate 2 GiB")), first_line(KeyError())
        ('out of memory', 'KeyError')
    """
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

