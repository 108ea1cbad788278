"""Small helpers shared by the configuration dataclasses."""

from dataclasses import fields
import difflib
import math


def known_fields(cls, values):
    """Return ``values`` as a new dict, raising ``ValueError`` on keys that ``cls`` lacks.

    ``cls`` is a dataclass; ``values`` a mapping (or ``None``, read as empty), e.g. from YAML.
    """
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        # A typo is named with the key it was meant to be, not only among 40 known keys.
        guesses = [f'{key!r} -> {close[0]!r}' for key in unknown
                   for close in [difflib.get_close_matches(str(key), sorted(known), n=1)]
                   if close]
        hint = f' (a typo? {", ".join(guesses)})' if guesses else ''
        raise ValueError(f'unknown {cls.__name__} keys {unknown}{hint}; known keys: '
                         f'{sorted(known)}')
    return values


def check_field_types(instance):
    """Check a dataclass instance's fields typed bool, int or float; raise ValueError naming one.

    A bool field takes true or false only (a YAML ``"false"`` is a string); an int field an
    integer (a whole float such as 8.0 is stored as 8; a bool is refused); a float field a
    finite number (not a bool). Call it first in ``__post_init__``, before checks that compare
    values.
    """
    for item in fields(instance):
        value = getattr(instance, item.name)
        if item.type is bool and not isinstance(value, bool):
            raise ValueError(f'{item.name} must be true or false, got {value!r}')
        if item.type is int:
            if isinstance(value, float) and value.is_integer():
                object.__setattr__(instance, item.name, int(value))
            elif isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f'{item.name} must be an integer, got {value!r}')
        if item.type is float and (isinstance(value, bool) or not isinstance(value, (int, float))
                                   or not math.isfinite(value)):
            raise ValueError(f'{item.name} must be a finite number, got {value!r}')
