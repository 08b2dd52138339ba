"""Routes chosen by measurement on the machine at hand.

Every ring product (`matmul`, `conv2d`) can be computed several exact ways:
the library's own int64 kernel, float64 GEMMs on limbs, int8 GEMMs on
bytes... Which one is fastest depends on the CPU (a 64-bit vector multiply
or not), the BLAS, the device and the shape, so "auto" does not guess: the
first time a kernels object meets a *shape class* (each size rounded up to a
power of two, batch axes multiplied out, plus the convolution's
configuration), it times the candidate routes on the operands of that call,
keeps the fastest, and reuses the choice for every later call of that class.

`matmul_route()` returns a `RouteChoice`: the route name (a `str`, so old
comparisons keep working) with `.source` (how it was decided), `.reason`
and `.timings_ms` (what each candidate took).

Environment:
    PRIVKERAS_KERNEL_ROUTE: force the route "auto" takes (for example
        `native` or `limbs`), for every library that has it; a library
        without that route raises `ValueError` naming the routes it has.
    PRIVKERAS_ROUTE_CACHE: `memory` (the default: decisions live for the
        process), `disk` (also kept in a JSON file per machine fingerprint,
        see `route_cache_path()`, and read back by later processes), or `off`
        (nothing is measured: "auto" takes the library's static default, as
        before measured routes; deterministic, for debugging).
    PRIVKERAS_ROUTE_CACHE_DIR: where `disk` keeps its files (default
        `$XDG_CACHE_HOME/privkeras/routes`, else `~/.cache/privkeras/routes`).

Measurement costs a few milliseconds per shape class: each candidate runs
once to warm up (one `WARMUP_ELIMINATION_FACTOR` times slower than the best
is dropped) and once timed (`ELIMINATION_FACTOR`), then the survivors run up
to `TIMED_ROUNDS` interleaved rounds, within `DECISION_BUDGET_S`, and the
lowest median wins. Large products are timed on a slice of their rows
(`PROBE_VOLUME` multiply-adds) since every route's cost grows linearly with
the rows; products below `MIN_TIMED_VOLUME` are not timed at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DECISION_BUDGET_S",
    "ELIMINATION_FACTOR",
    "MIN_TIMED_VOLUME",
    "PROBE_VOLUME",
    "PROBE_VOLUME_UNKEPT",
    "ROUTE_CACHE_MODES",
    "TIMED_ROUNDS",
    "WARMUP_ELIMINATION_FACTOR",
    "RouteChoice",
    "RouteTable",
    "cpu_info",
    "machine_fingerprint",
    "route_cache_mode",
    "route_cache_path",
    "shape_class",
]

#: A candidate whose first timed run is this many times slower than the best one is dropped.
ELIMINATION_FACTOR = 2.0
#: A candidate whose warm-up run is this many times slower than the best warm-up is dropped
#: (lenient: a first call can pay one-time costs, such as oneDNN's JIT or first page faults).
WARMUP_ELIMINATION_FACTOR = 50.0
#: Interleaved timed rounds per surviving candidate (the median is compared).
TIMED_ROUNDS = 3
#: Products with more multiply-adds than this are timed on a slice of their rows.
PROBE_VOLUME = 2**21
#: The same where the right operand is split on every call (its split does not shrink with rows).
PROBE_VOLUME_UNKEPT = 2**24
#: Products with fewer multiply-adds are not timed (a few microseconds either way):
#: they take the library's static route.
MIN_TIMED_VOLUME = 2**16
#: Seconds one decision may spend timing: past it, the fastest so far wins.
DECISION_BUDGET_S = 0.05
#: Values of PRIVKERAS_ROUTE_CACHE.
ROUTE_CACHE_MODES = ("memory", "disk", "off")


class RouteChoice(str):
    """The name of a route, with how and why it was chosen.

    Compares and hashes as the plain route name.

    Attributes:
        source: "measured" (timed now), "disk" (timed by an earlier process on
            this machine), "cached" (timed earlier in this process), "forced"
            (PRIVKERAS_KERNEL_ROUTE), "configured" (the kernels' `matmul_method`),
            "only" (the one route that applies), or "static" (measurement off).
        reason: One line for people.
        timings_ms: Route -> median milliseconds measured (empty unless timed).
        shape_class: The key the decision is cached under.
    """

    source: str
    reason: str
    timings_ms: dict[str, float]
    shape_class: tuple

    def __new__(
        cls,
        route: str,
        source: str,
        reason: str,
        timings_ms: Mapping[str, float] | None = None,
        shape_class: tuple = (),
    ):
        choice = super().__new__(cls, route)
        choice.source = source
        choice.reason = reason
        choice.timings_ms = dict(timings_ms or {})
        choice.shape_class = tuple(shape_class)
        return choice

    def __repr__(self) -> str:
        return f"RouteChoice({str(self)!r}, source={self.source!r}, reason={self.reason!r})"

    def cached(self) -> RouteChoice:
        """The same decision, as seen by a later call."""
        source = self.source if self.source in ("disk", "forced", "only", "static") else "cached"
        return RouteChoice(str(self), source, self.reason, self.timings_ms, self.shape_class)


def shape_class(*sizes: int) -> tuple[int, ...]:
    """Each size rounded up to a power of two (0 stays 0): routes are decided per class."""
    return tuple(0 if s <= 0 else 1 << (int(s) - 1).bit_length() for s in sizes)


def route_cache_mode() -> str:
    """PRIVKERAS_ROUTE_CACHE, validated."""
    mode = os.environ.get("PRIVKERAS_ROUTE_CACHE", "memory").strip().lower() or "memory"
    if mode not in ROUTE_CACHE_MODES:
        raise ValueError(
            f"Expected PRIVKERAS_ROUTE_CACHE in {list(ROUTE_CACHE_MODES)}. "
            f"Received: PRIVKERAS_ROUTE_CACHE={mode!r}"
        )
    return mode


def forced_route() -> str | None:
    """PRIVKERAS_KERNEL_ROUTE, or None."""
    return os.environ.get("PRIVKERAS_KERNEL_ROUTE", "").strip() or None


def cpu_info() -> dict[str, Any]:
    """The CPU model, core count and vector extensions (from /proc/cpuinfo where there is one)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = value.split()
    except OSError:
        pass
    vector = sorted(
        f
        for f in flags
        if f.startswith(("avx", "sse", "amx", "fma", "neon", "asimd", "sve", "f16c"))
        or f in ("vnni", "bf16", "i8mm")
    )
    return {"model": model, "cores": os.cpu_count(), "vector_extensions": vector}


def machine_fingerprint(library_version: str = "") -> str:
    """A short hash of what makes timings differ: CPU model, its flags, cores, library version."""
    info = cpu_info()
    text = json.dumps(
        [
            info["model"],
            info["vector_extensions"],
            info["cores"],
            platform.machine(),
            library_version,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def route_cache_path(library: str, library_version: str = "") -> Path:
    """Where PRIVKERAS_ROUTE_CACHE=disk keeps the decisions of one library on this machine."""
    root = os.environ.get("PRIVKERAS_ROUTE_CACHE_DIR")
    if root is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        root = os.path.join(base, "privkeras", "routes")
    return Path(root) / f"{library}-{machine_fingerprint(library_version)}.json"


def _median(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2]


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class RouteTable:
    """Measured route decisions of one kernels object, by shape class.

    Args:
        library: The kernels' library name (for the disk file).
        library_version: Its version (part of the machine fingerprint).
        synchronize: Called after each timed run (CUDA needs a sync to time).
    """

    def __init__(
        self,
        library: str,
        library_version: str = "",
        synchronize: Callable[[], None] | None = None,
    ):
        self.library = library
        self.library_version = library_version
        self._synchronize = synchronize or (lambda: None)
        self._decisions: dict[tuple, RouteChoice] = {}
        #: Exact operand shapes -> (environment, decision): the kernels' per-call fast path.
        self.memo: dict[tuple, tuple] = {}
        self._lock = threading.RLock()
        self._disk_loaded = False
        #: Seconds spent measuring, in total (the decision cost of this process).
        self.seconds_measuring = 0.0

    def decisions(self) -> dict[tuple, RouteChoice]:
        """A copy of every decision made so far."""
        with self._lock:
            return dict(self._decisions)

    def clear(self) -> None:
        """Forgets the decisions of this process (the disk file is left alone)."""
        with self._lock:
            self._decisions.clear()
            self.memo.clear()
            self._disk_loaded = False

    def choose(
        self,
        key: tuple,
        candidates: Callable[[], dict[str, Callable[[], Any]]],
        static: str,
        names: list[str] | None = None,
    ) -> RouteChoice:
        """The route for shape class `key`, measuring `candidates()` the first time.

        Args:
            key: The shape class (hashable, JSON-able: strs, ints, bools).
            candidates: Makes route -> zero-argument function that runs the
                route on this call's operands (or a probe of them).
            static: The route taken when measurement is off.
            names: The candidates' names, if known without making them.

        Raises:
            ValueError: If PRIVKERAS_KERNEL_ROUTE names a route not among the candidates.
        """
        forced = forced_route()
        if forced is not None:
            return self._forced(key, forced, names if names is not None else list(candidates()))
        mode = route_cache_mode()
        if mode == "off":
            return RouteChoice(static, "static", "PRIVKERAS_ROUTE_CACHE=off", shape_class=key)
        with self._lock:
            known = self._decisions.get(key)
            if known is None and mode == "disk":
                self._load_disk()
                known = self._decisions.get(key)
            if known is not None:
                return known.cached()
            choice = self._measure(key, candidates())
            self._decisions[key] = choice
            if mode == "disk" and choice.source == "measured":
                self._save_disk()
            return choice

    def lookup(self, key: tuple) -> RouteChoice | None:
        """The decision already made for `key` (in memory, or on disk in disk mode), or None."""
        with self._lock:
            if key not in self._decisions and route_cache_mode() == "disk":
                self._load_disk()
            return self._decisions.get(key)

    def _forced(self, key, forced, names) -> RouteChoice:
        if forced not in names:
            raise ValueError(
                f"Expected PRIVKERAS_KERNEL_ROUTE in {names} for {self.library} here. "
                f"Received: PRIVKERAS_KERNEL_ROUTE={forced!r}"
            )
        return RouteChoice(forced, "forced", "PRIVKERAS_KERNEL_ROUTE", shape_class=key)

    def _measure(self, key: tuple, candidates: dict[str, Callable[[], Any]]) -> RouteChoice:
        if len(candidates) == 1:
            (only,) = candidates
            return RouteChoice(only, "only", "the only exact route here", shape_class=key)
        start = time.perf_counter()
        # Warm-up (first calls allocate and page-fault): far slower candidates stop here.
        warm = {name: self._run(fn) for name, fn in candidates.items()}
        best_warm = min(warm.values())
        alive = [n for n, s in warm.items() if s <= WARMUP_ELIMINATION_FACTOR * best_warm]
        samples = {name: [warm[name]] for name in candidates}
        if len(alive) > 1:
            first = {name: self._run(candidates[name]) for name in alive}
            for name, seconds in first.items():
                samples[name] = [seconds]
            best_first = min(first.values())
            alive = [n for n, s in first.items() if s <= ELIMINATION_FACTOR * best_first]
        for _ in range(TIMED_ROUNDS - 1 if len(alive) > 1 else 0):
            if time.perf_counter() - start > DECISION_BUDGET_S:
                break
            for name in alive:
                samples[name].append(self._run(candidates[name]))
        medians = {n: 1e3 * _median(s) for n, s in samples.items()}
        winner = min(alive, key=lambda n: medians[n])
        dropped = [n for n in candidates if n not in alive]
        elapsed = time.perf_counter() - start
        self.seconds_measuring += elapsed
        timings = ", ".join(f"{n} {medians[n]:.3g} ms" for n in candidates)
        reason = f"fastest when timed here ({timings}; decided in {1e3 * elapsed:.3g} ms)"
        if dropped:
            reason += f"; {', '.join(dropped)} dropped early"
        return RouteChoice(winner, "measured", reason, medians, key)

    def _run(self, fn: Callable[[], Any]) -> float:
        def run():
            fn()
            self._synchronize()

        return _timed(run)

    # -- disk ------------------------------------------------------------------------
    def _path(self) -> Path:
        return route_cache_path(self.library, self.library_version)

    def _load_disk(self) -> None:
        if self._disk_loaded:
            return
        self._disk_loaded = True
        try:
            entries = json.loads(self._path().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        for entry in entries if isinstance(entries, list) else []:
            try:
                key = _as_key(entry["key"])
                choice = RouteChoice(
                    str(entry["route"]),
                    "disk",
                    f"measured earlier on this machine: {entry.get('reason', '')}",
                    {str(k): float(v) for k, v in dict(entry.get("timings_ms", {})).items()},
                    key,
                )
            except (KeyError, TypeError, ValueError):
                continue
            self._decisions.setdefault(key, choice)

    def _save_disk(self) -> None:
        path = self._path()
        entries = [
            {"key": list(key), "route": str(c), "reason": c.reason, "timings_ms": c.timings_ms}
            for key, c in self._decisions.items()
            if c.source in ("measured", "disk", "cached")
        ]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8"
            ) as f:
                json.dump(entries, f)
            os.replace(f.name, path)
        except OSError:  # a read-only home: the decision still lives in memory
            pass


def _as_key(value: Any) -> tuple:
    """A JSON list back into the nested tuple it was saved from."""
    return tuple(_as_key(v) if isinstance(v, list) else v for v in value)
