"""The one routing point from privacy policies to engines.

Engines register under a unique name with `register_engine` (kept in
`ENGINES`, a `privkeras.core.registry.Registry`: duplicates refused unless
`replace=True`); `get_engine` picks the engine for a policy and a Keras
backend. Nothing else in privkeras chooses an engine.

Example:

```python
from privkeras.backends import registry

registry.available_engines()           # {'plaintext': PlaintextEngine, ...}
engine = registry.get_engine(None, "tensorflow")   # the plaintext oracle
```
"""

from __future__ import annotations

from privkeras.backends.base import Engine
from privkeras.core.registry import Registry
from privkeras.errors import EngineNotAvailableError, EngineRegistrationError, RegistrationError
from privkeras.policies import Policy

__all__ = [
    "ENGINES",
    "available_engines",
    "engine_variants",
    "get_engine",
    "register_engine",
    "unregister_engine",
]

#: Engine classes by name.
ENGINES: Registry[str, type[Engine]] = Registry("engine", unknown_error=EngineNotAvailableError)


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
        try:
            return ENGINES.register(name, engine_cls, replace=replace)
        except RegistrationError:
            raise EngineRegistrationError(
                f"An engine named {name!r} is already registered "
                f"({ENGINES.get(name).__qualname__}). Pass replace=True to replace it."
            ) from None

    return _register if cls is None else _register(cls)


def unregister_engine(name: str) -> None:
    """Removes an engine (for tests and plugins)."""
    ENGINES.unregister(name)


def available_engines() -> dict[str, type[Engine]]:
    """A copy of the registry: name -> engine class."""
    return ENGINES.as_dict()


def engine_variants(policy_kind: str) -> tuple[str, ...]:
    """The `variant` names registered for a policy kind (what `MPC(engine=...)` accepts)."""
    return tuple(
        sorted(
            {
                cls.variant
                for _, cls in ENGINES.items()
                if cls.policy_kind == policy_kind and cls.variant
            }
        )
    )


def _describe_registry() -> str:
    if not ENGINES:
        return "no engines are registered"
    rows = [
        f"{name!r} (policy={cls.policy_kind!r}, keras backends={sorted(cls.keras_backends)}"
        + (f", engine={cls.variant!r}" if cls.variant else "")
        + ")"
        for name, cls in sorted(ENGINES.items())
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
    candidates = [cls for _, cls in ENGINES.items() if cls.policy_kind == kind]
    if requested is not None:
        candidates = [cls for cls in candidates if cls.variant == requested]
    fitting = [cls for cls in candidates if keras_backend in cls.keras_backends]
    if requested is None and len(fitting) > 1:
        # Several variants: prefer the one whose tensors match the Keras backend.
        preferred = [cls for cls in fitting if cls.native_backend == keras_backend]
        fitting = preferred or fitting
    if fitting:
        return fitting[0](policy)
    wanted = f"policy kind {kind!r}" + (f" with engine={requested!r}" if requested else "")
    raise EngineNotAvailableError(
        f"No engine is available for {wanted} under Keras backend {keras_backend!r}; "
        f"{_describe_registry()}."
    )
