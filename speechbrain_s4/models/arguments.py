"""Separators that remember the arguments they were built with.

Writing an inference folder means writing a YAML definition that rebuilds
the separator. Reading the values back from the built module's layers
duplicates every constructor in a "reader" that drifts when the constructor
changes; recording the bound arguments at construction cannot drift.

Example
-------
>>> import torch
>>> @records_arguments
... class Scaler(torch.nn.Module):
...     def __init__(self, gain: float = 2.0, sample_rate: int = 8000):
...         super().__init__()
...         self.gain = gain
>>> Scaler(gain=3.0).init_arguments
{'gain': 3.0, 'sample_rate': 8000}
"""

import functools
import inspect

__all__ = ["records_arguments"]


def records_arguments(cls):
    """Class decorator: instances get ``init_arguments``, a dict of the
    keyword arguments (defaults filled in) their ``__init__`` received.

    Only the class itself records; a subclass that is not decorated does not
    inherit a record it could not rebuild from.

    Arguments
    ---------
    cls : type
        A class whose ``__init__`` takes plain values (numbers, strings,
        booleans), as every separator of this package does.

    Returns
    -------
    type
        ``cls``, with its ``__init__`` wrapped.
    """
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if type(self) is cls:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop(next(iter(signature.parameters)))  # self
            self.init_arguments = arguments

    cls.__init__ = __init__
    return cls
