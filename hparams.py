"""Declaring hyperparameters: a Param is one hyperparameter (its checkpoint name, type, default, flag spellings and
allowed Range); methods declare theirs (methods.py) and config.py turns them into flags and checks.

Every number a flag takes has its allowed range declared once (a Range), checked by argparse as it parses the
flag, so a bad value is a one-line usage error naming the flag, before any check that combines flags and before
anything touches the disk. The same ranges validate a checkpoint's stored values.
"""
import argparse
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """The values a numeric flag allows: finite (NaN and inf never make sense here), within the bounds given."""
    minimum: float = None      # inclusive lower bound
    above: float = None        # exclusive lower bound
    below: float = None        # exclusive upper bound
    maximum: float = None      # inclusive upper bound
    why: str = None            # the reason for a bound that is not obvious

    def admits(self, value):
        finite = not isinstance(value, float) or math.isfinite(value)   # ints are; a huge one overflows isfinite
        return (finite
                and (self.minimum is None or value >= self.minimum) and (self.above is None or value > self.above)
                and (self.below is None or value < self.below) and (self.maximum is None or value <= self.maximum))

    def describe(self, kind):
        """E.g. "an integer >= 1", "a finite number >= 0 and < 1"."""
        bounds = [f"{sign} {bound}" for sign, bound in ((">=", self.minimum), (">", self.above),
                                                           ("<", self.below), ("<=", self.maximum))
                  if bound is not None]
        text = ("an integer" if kind is int else "a finite number") + (" " + " and ".join(bounds) if bounds else "")
        return text + (f" ({self.why})" if self.why else "")


def number(kind, allowed):
    """An argparse type= function: the flag's text as `kind` (int or float) within `allowed`, else a one-line
    error naming the value and the range (argparse prefixes the flag)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or (allowed is not None and not allowed.admits(value)):
            expected = allowed.describe(kind) if allowed is not None else \
                f"a{'n integer' if kind is int else ' number'}"
            raise argparse.ArgumentTypeError(f"got {text}, expected {expected}")
        return value
    return parse


def epoch_list(text):
    """An argparse type= function: increasing epochs >= 1 separated by commas (the seed CMC's --lr_decay_epochs
    120,160,200) -> a tuple of ints, else a one-line error naming the value."""
    try:
        epochs = tuple(int(e) for e in text.split(","))
    except ValueError:
        epochs = ()
    if not epochs or epochs[0] < 1 or any(b <= a for a, b in zip(epochs, epochs[1:])):
        raise argparse.ArgumentTypeError(f"got {text}, expected increasing epochs >= 1 separated by commas, "
                                         f"e.g. 120,160,200")
    return epochs


AT_LEAST_1, AT_LEAST_0, POSITIVE = Range(minimum=1), Range(minimum=0), Range(above=0)
positive_int = number(int, AT_LEAST_1)
non_negative_int = number(int, AT_LEAST_0)
positive_float = number(float, POSITIVE)
non_negative_float = number(float, AT_LEAST_0)



@dataclass(frozen=True)
class Param:
    """One hyperparameter: its name in the checkpoint (and the flag's dest), type, default and flag spellings."""
    name: str
    type: type
    default: object
    help: str
    flags: tuple = ()          # extra command-line spellings
    allowed: Range = None      # numbers: the values that can work
    switch: bool = False       # a flag without a value that sets True
    hyphenated: bool = False   # the seed spells it --moco-k: accept that first, and --moco_k too
    many: bool = False         # a list of one or more values (nargs "+"), each within `allowed`
    choices: tuple = None      # words: the values it takes
    legacy: object = None      # the value of checkpoints written before it existed (None: they must have it)

    def flag_names(self):
        names = [f"--{self.name.replace('_', '-')}"] if self.hyphenated else []
        return tuple(dict.fromkeys(names + [f"--{self.name}", *self.flags]))

    def shown_default(self):
        if callable(self.default):
            return "by image size"
        return int(self.default) if self.type is bool else self.default

    def convert(self, value):
        """A flag's or a checkpoint's value with this Param's type (a list of them when many)."""
        return [self.type(v) for v in value] if self.many else self.type(value)

    def default_for(self, encoder_size, arch):
        """The default of a model built from scratch; a callable default depends on the input size and arch."""
        return self.default(encoder_size, arch) if callable(self.default) else self.default

    def admits(self, value):
        values = value if self.many else [value]
        if self.choices is not None:
            return all(v in self.choices for v in values)
        return self.allowed is None or all(self.allowed.admits(v) for v in values)
