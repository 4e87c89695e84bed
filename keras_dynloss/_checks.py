"""Argument checks shared by the public constructors.

Every rejected value raises ``ValueError`` with the message shape
"Invalid value for argument `name`: expected <what>. Received: name=<value>".
"""

import math
import numbers

__all__ = []


def invalid(name, expected, value):
    """Returns the package's standard ValueError for a rejected argument."""
    return ValueError(
        f"Invalid value for argument `{name}`: expected {expected}. "
        f"Received: {name}={value!r}"
    )


def check_int(name, value, *, minimum=None, maximum=None, allow_none=False):
    """Returns ``value`` as an int; rejects bools, floats and out-of-range values."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise invalid(name, _int_range(minimum, maximum), value)
    value = int(value)
    if (minimum is not None and value < minimum) or (
        maximum is not None and value > maximum
    ):
        raise invalid(name, _int_range(minimum, maximum), value)
    return value


def check_number(name, value, *, minimum=None):
    """Returns ``value`` as a finite float >= ``minimum``."""
    expected = "a finite number" + (f" >= {minimum}" if minimum is not None else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise invalid(name, expected, value)
    value = float(value)
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        raise invalid(name, expected, value)
    return value


def check_float(name, value, *, positive=False, nonnegative=False):
    """Returns ``value`` as a finite float, optionally > 0 or >= 0."""
    expected = "a finite number" + (" > 0" if positive else " >= 0" if nonnegative else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise invalid(name, expected, value)
    value = float(value)
    if (
        not math.isfinite(value)
        or (positive and value <= 0)
        or (nonnegative and value < 0)
    ):
        raise invalid(name, expected, value)
    return value


def check_callable(name, value):
    if not callable(value):
        raise invalid(name, "a callable", value)
    return value


def check_choice(name, value, choices):
    """Returns ``value`` if it is one of ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise invalid(name, "one of " + ", ".join(repr(c) for c in choices), value)
    return value


def check_bool(name, value):
    if not isinstance(value, bool):
        raise invalid(name, "True or False", value)
    return value


def _int_range(minimum, maximum):
    if minimum is not None and maximum is not None:
        return f"an integer in [{minimum}, {maximum}]"
    if minimum is not None:
        return f"an integer >= {minimum}"
    if maximum is not None:
        return f"an integer <= {maximum}"
    return "an integer"


