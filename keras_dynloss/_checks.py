"""Argument checks: a rejected value raises ``ValueError`` shaped
"Invalid value for argument `name`: expected <what>. Received: name=<value>"."""

import math
import numbers


def invalid(name, expected, value):
    """Returns the package's standard ValueError for a rejected argument."""
    return ValueError(f"Invalid value for argument `{name}`: expected {expected}. "
                      f"Received: {name}={value!r}")


def check_int(name, value, *, minimum=None, maximum=None, allow_none=False):
    """Returns ``value`` as an int; rejects bools, floats and values outside the bounds."""
    if value is None and allow_none:
        return None
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        expected = (f"an integer in [{minimum}, {maximum}]" if maximum is not None
                    else "an integer" + (f" >= {minimum}" if minimum is not None else ""))
        raise invalid(name, expected, value)
    return int(value)


def check_number(name, value, *, minimum=None, positive=False):
    """Returns ``value`` as a finite float, >= ``minimum`` (or > 0 if ``positive``)."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or (positive and value <= 0)
            or (minimum is not None and value < minimum)):
        bound = " > 0" if positive else f" >= {minimum}" if minimum is not None else ""
        raise invalid(name, "a finite number" + bound, value)
    return float(value)


def check_float(name, value, *, positive=False, nonnegative=False):
    """Returns ``value`` as a finite float, optionally > 0 or >= 0."""
    return check_number(name, value, minimum=0 if nonnegative else None, positive=positive)


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
