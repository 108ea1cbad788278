"""Small helpers shared by the configuration dataclasses."""

from dataclasses import fields


def known_fields(cls, values):
    """Return ``values`` as a new dict, raising ``ValueError`` on keys that ``cls`` lacks.

    ``cls`` is a dataclass; ``values`` a mapping (or ``None``, read as empty), e.g. from YAML.
    """
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f'unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}')
    return values
