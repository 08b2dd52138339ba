"""The one routing point from privacy policies to engines.

Engines register under a unique name with `register_engine`; `get_engine`
picks the engine for a policy and a Keras backend. Nothing else in privkeras
chooses an engine.

Example:

```python
from privkeras.backends import registry

registry.available_engines()           # {'plaintext': PlaintextEngine, ...}
engine = registry.get_engine(None, "tensorflow")   # the plaintext oracle
```
"""

from __future__ import annotations

from privkeras.backends.base import Engine
from privkeras.errors import EngineNotAvailableError, EngineRegistrationError
from privkeras.policies import Policy

_ENGINES: dict[str, type[Engine]] = {}

#: Policy kinds that a later engine will serve, with the reason none is registered.
_PLANNED: dict[str, str] = {}


def register_engine(cls: type[Engine] | None = None, *, replace: bool = False):
    """Registers an `Engine` subclass under `cls.name`. Usable as a decorator.

    Args:
        cls: The engine class.
        replace: Allow replacing an engine already registered under that name.

    Raises:
        EngineRegistrationError: For a duplicate name (unless `replace`) or a
            class that is not an `Engine` with a `name` and `policy_kind`.
    """

    def _register(engine_cls: type[Engine]) -> type[Engine]:
        if not (isinstance(engine_cls, type) and issubclass(engine_cls, Engine)):
            raise EngineRegistrationError(f"Expected an Engine subclass. Received: {engine_cls!r}")
        for attr in ("name", "policy_kind"):
            if not hasattr(engine_cls, attr):
                raise EngineRegistrationError(
                    f"Expected engine class {engine_cls.__name__} to define {attr!r}."
                )
        name = engine_cls.name
        if name in _ENGINES and not replace and _ENGINES[name] is not engine_cls:
            raise EngineRegistrationError(
                f"An engine named {name!r} is already registered "
                f"({_ENGINES[name].__qualname__}). Pass replace=True to replace it."
            )
        _ENGINES[name] = engine_cls
        return engine_cls

    return _register if cls is None else _register(cls)


def unregister_engine(name: str) -> None:
    """Removes an engine (for tests and plugins)."""
    _ENGINES.pop(name, None)


def available_engines() -> dict[str, type[Engine]]:
    """A copy of the registry: name -> engine class."""
    return dict(_ENGINES)


def _describe_registry() -> str:
    if not _ENGINES:
        return "no engines are registered"
    rows = [
        f"{name!r} (policy={cls.policy_kind!r}, keras backends={sorted(cls.keras_backends)}"
        + (f", engine={cls.variant!r}" if cls.variant else "")
        + ")"
        for name, cls in sorted(_ENGINES.items())
    ]
    return "registered engines: " + "; ".join(rows)


def get_engine(policy: Policy | None, keras_backend: str) -> Engine:
    """Returns a new engine instance serving `policy` under `keras_backend`.

    Args:
        policy: A resolved policy, or None for plain Keras (the plaintext engine).
        keras_backend: `keras.backend.backend()`.

    Raises:
        EngineNotAvailableError: When no registered engine fits; the message
            lists the registered engines.
    """
    kind = None if policy is None else policy.kind
    requested = getattr(policy, "engine", None)
    candidates = [cls for cls in _ENGINES.values() if cls.policy_kind == kind]
    if requested is not None:
        candidates = [cls for cls in candidates if cls.variant == requested]
    fitting = [cls for cls in candidates if keras_backend in cls.keras_backends]
    if requested is None and len(fitting) > 1:
        # Several variants: prefer the one whose tensors match the Keras backend.
        preferred = [
            cls for cls in fitting if getattr(cls, "native_backend", None) == keras_backend
        ]
        fitting = preferred or fitting
    if fitting:
        return fitting[0](policy)
    wanted = f"policy kind {kind!r}" + (f" with engine={requested!r}" if requested else "")
    reason = _PLANNED.get(kind or "", "")
    raise EngineNotAvailableError(
        f"No engine is available for {wanted} under Keras backend {keras_backend!r}"
        + (f" ({reason})" if reason else "")
        + f"; {_describe_registry()}."
    )
