"""Networks that record their constructor arguments (in the spirit of diffusers' ``register_to_config``).

A network class mixes in :class:`ConfigMixin` and decorates its ``__init__`` with
:func:`register_to_config`; every instance then carries ``config``, a read-only dict of the
arguments it was built with (defaults included), and ``cls.from_config(config)`` builds the same
network again. ``config`` is what a model folder's ``config.json`` holds (``specdiff.pipeline.folder``
writes it next to diffusers' ``_class_name`` / ``_diffusers_version`` keys and reads it back), so
no network writes its config by hand and a new argument cannot be forgotten in the file.

Two class attributes keep the files exactly as diffusers writes them:

- ``config_casts``: a function per argument that turns what a caller passed into its JSON form
  (``timbres=("a", "b")`` -> ``["a", "b"]``, ``score_roll_features=np.int64(128)`` -> ``128``);
- ``config_optional``: arguments written only when they differ from the constructor's default,
  for options added after the original layout, so an original folder's ``config.json`` (and the
  official checkpoint's) stays byte for byte what it was and still loads strictly.

Light: no torch import (the decorator works on any class).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")


class FrozenConfig(dict):
    """A read-only ``dict`` of a network's constructor arguments, also readable as attributes
    (``config.d_model``), like diffusers' ``FrozenDict``. A ``dict`` so that ``json.dumps`` and
    ``dict(config)`` work as before; read-only because changing it would no longer describe the
    network it belongs to (build a new one with ``from_config`` instead)."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no key {name!r}") from None

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"{type(self).__name__} is read-only; build a new network with from_config(...)")

    __setitem__ = __delitem__ = __setattr__ = __delattr__ = _read_only
    update = pop = popitem = clear = setdefault = __ior__ = _read_only  # type: ignore[assignment]

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        # pickle / copy.deepcopy (EMA copies, DataLoader workers) would otherwise refill the dict
        # item by item through the blocked __setitem__.
        return type(self), (dict(self),)


class ConfigMixin:
    """Gives a network ``config`` (set by :func:`register_to_config`) and ``from_config``."""

    #: Per argument: how its value is written to ``config`` (default: as passed, tuples as lists).
    config_casts: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}
    #: Arguments that appear in ``config`` only when they differ from the constructor's default.
    config_optional: ClassVar[frozenset[str]] = frozenset()

    config: FrozenConfig

    @classmethod
    def from_config(cls: type[T], config: Mapping[str, Any]) -> T:
        """A new instance built from ``config`` (a ``config.json``'s dict; keys starting with ``_``,
        such as diffusers' ``_class_name``, are skipped). An unknown key raises ``TypeError``."""
        return cls(**{k: v for k, v in config.items() if not k.startswith("_")})


def _as_json(value: Any) -> Any:
    """Tuples as lists, recursively: the value ``json.loads`` gives back after a save."""
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    return value


def register_to_config(init: Callable[..., None]) -> Callable[..., None]:
    """Decorate a :class:`ConfigMixin` subclass's ``__init__``: from its start, ``self.config`` holds
    every named argument (defaults included, cast by ``config_casts``; those of
    ``config_optional`` only when they differ from their default). ``*args`` / ``**kwargs``
    parameters are not allowed: a config must name each value it holds."""
    signature = inspect.signature(init)
    params = [p for name, p in signature.parameters.items() if name != "self"]
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        raise TypeError(f"{init.__qualname__}: register_to_config needs named arguments only")

    @functools.wraps(init)
    def wrapper(self: ConfigMixin, *args: Any, **kwargs: Any) -> None:
        # Set before the body runs: initialisation reads it (the attention scale needs d_kv). A
        # subclass's decorated __init__ that calls this one has already set its own: it is kept.
        if "config" not in self.__dict__:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            casts, optional = type(self).config_casts, type(self).config_optional
            config: dict[str, Any] = {}
            for p in params:
                cast = casts.get(p.name, _as_json)
                value = cast(bound.arguments[p.name])
                if p.name in optional and value == cast(p.default):
                    continue
                config[p.name] = value
            # object.__setattr__: plain instance state, whatever __setattr__ the class has.
            object.__setattr__(self, "config", FrozenConfig(config))
        init(self, *args, **kwargs)

    return wrapper
