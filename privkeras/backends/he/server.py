"""The server role: holds the model and public contexts, computes on ciphertexts."""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Iterable, Iterator
from typing import Any

from privkeras.backends.he.ckks import chain_primes
from privkeras.backends.he.context import EncryptedBatch, PublicContext
from privkeras.backends.he.cost import program_cost
from privkeras.backends.he.errors import ContextMismatchError, HEInputError, SecretKeyError
from privkeras.backends.he.layout import next_power_of_two
from privkeras.backends.he.params import CKKSParameters, select_parameters
from privkeras.backends.he.planning import ExecutionPlan, RouteMeasurements
from privkeras.backends.he.program import HEGraph, PackedProgram, PackingSpec
from privkeras.policies import HE

__all__ = ["ExecutionPlan", "HEServer"]


class HEServer:
    """Model owner: evaluates a Keras model on ciphertexts with public keys only.

    Building the server converts the model (`UnsupportedLayerError` for a
    layer without an HE version) and chooses the CKKS parameters from its
    depth (`DepthExceededError` when it is too deep), before any key exists.

    Args:
        model: A built Keras `Sequential` (for example a `PrivateSequential`).
        policy: An `privkeras.HE` policy (ring degree, scale, security), or None
            for the defaults.
        max_programs: Packed programs (one per block size) kept with their
            encoded weights.
        pool: An `EvaluationPool` that `evaluate_many` runs independent
            groups on (every core), or None to evaluate in this process.

    What a server process (for example `privkeras serve`) does with it, every
    object crossing as bytes:

    ```python
    server = HEServer(model, pk.HE(), pool=EvaluationPool())
    spec = server.packing(n_samples=4096)           # to the client: spec.to_bytes()
    public = PublicContext.from_bytes(context_bytes)       # from the client, once
    batches = (EncryptedBatch.from_bytes(b, public) for b in requests)
    replies = [out.to_bytes() for out in server.evaluate_many(batches, public)]
    ```
    """

    has_secret_key = False

    def __init__(
        self, model: Any, policy: HE | None = None, max_programs: int = 4, pool: Any = None
    ):
        policy = policy if policy is not None else HE()
        self.graph = HEGraph.from_model(model)
        self.parameters: CKKSParameters = select_parameters(
            self.graph.depth,
            policy.poly_modulus_degree,
            policy.scale_bits,
            policy.security_level,
        )
        self._primes = chain_primes(
            self.parameters.poly_modulus_degree, self.parameters.coeff_mod_bit_sizes
        )
        self._zero = 2.0 ** -(self.parameters.scale_bits + 1)
        self._programs: collections.OrderedDict[int, PackedProgram] = collections.OrderedDict()
        self._specs: dict[str, int] = {}
        self._costs: dict[tuple[int, int, int], float] = {}
        self._max_programs = max_programs
        self.pool = pool
        self.routes = RouteMeasurements()

    @property
    def depth(self) -> int:
        """Multiplicative depth of the model."""
        return self.graph.depth

    # -- packing -------------------------------------------------------------------------
    def program(self, block: int) -> PackedProgram:
        """The model packed with `block` samples per block (cached)."""
        if block not in self._programs:
            program = self.graph.pack(self.parameters.slots, block, self._zero)
            self._programs[block] = program
            self._specs[program.spec(self.parameters).fingerprint] = block
            while len(self._programs) > self._max_programs:
                self._programs.popitem(last=False)[1].release_plaintexts()
        self._programs.move_to_end(block)
        return self._programs[block]

    def _cost(self, n_samples: int, block: int, workers: int) -> float:
        key = (n_samples, block, workers)
        if key not in self._costs:
            program = self.graph.pack(self.parameters.slots, block, self._zero)
            self._costs[key] = program_cost(
                program, self._primes, self.parameters, n_samples, workers
            )
        return self._costs[key]

    def plan(
        self, n_samples: int, block: int | None = None, workers: int | None = None
    ) -> ExecutionPlan:
        """The fastest way to run `n_samples` rows, by the cost model and measurements.

        Every block size from a sixteenth of the batch to N/2 is priced in
        this process and, when the server has a pool with several workers,
        on the pool (its start-up included until it has started); routes are
        compared by what they were measured to take here (`record`; see
        `planning`).

        Args:
            n_samples: Rows to classify.
            block: Fix the packing instead of choosing it.
            workers: Fix the route: 1 in this process, or the pool's size.
        """
        n_samples = max(1, int(n_samples))
        slots = self.parameters.slots
        if block is None:
            smallest = max(1, min(next_power_of_two(n_samples), slots) // 16)
            blocks = [smallest << i for i in range((slots // smallest).bit_length())]
        else:
            blocks = [block]
        pool_size = getattr(self.pool, "workers", 1)
        routes = [1] if pool_size <= 1 else [1, pool_size]
        if workers is not None:
            routes = [w for w in routes if w == workers] or [1]
        candidates = []
        for used in routes:
            start = 0.0 if used == 1 else self.pool.expected_start_seconds()
            for b in blocks:
                groups = math.ceil(n_samples / b)
                if used == 1 or groups > 1:
                    model_ms = self._cost(n_samples, b, used)
                    candidates.append(ExecutionPlan(b, groups, used, model_ms, start))
        if not candidates:  # the pool forced on a batch that is one group
            candidates = [ExecutionPlan(b, 1, 1, self._cost(n_samples, b, 1)) for b in blocks]
        return self.routes.choose(candidates)

    def record(self, plan: ExecutionPlan, seconds: float) -> None:
        """Tells the planner what running `plan` took (wall-clock, pool start-up excluded)."""
        self.routes.record(plan, seconds)

    def choose_block(self, n_samples: int) -> int:
        """The block size with the lowest estimated time for `n_samples` (see `plan`)."""
        return self.plan(n_samples).block

    def packing(self, n_samples: int | None = None, block: int | None = None) -> PackingSpec:
        """The public spec clients encrypt with.

        Args:
            n_samples: Choose the fastest packing for this many samples.
            block: Or fix the samples per block (a power of two up to N/2):
                1 gives the single-sample latency path, N/2 feature-major SIMD.
        """
        if block is None:
            block = self.choose_block(1 if n_samples is None else int(n_samples))
        return self.program(block).spec(self.parameters)

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self, batch: EncryptedBatch, context: PublicContext) -> EncryptedBatch:
        """Runs the model on encrypted inputs; the result stays encrypted.

        Raises:
            SecretKeyError: When handed anything that holds a secret key.
            ContextMismatchError: Ciphertexts under another context or spec, or
                a context without the Galois keys the packing needs.
        """
        program = self._checked(batch, context)
        ops = context.ops()
        outputs = program.apply(ops, batch.ciphertexts)
        return EncryptedBatch(outputs, batch.n_samples, "outputs", batch.spec_id, batch.context_id)

    def evaluate_many(
        self, batches: Iterable[EncryptedBatch], context: PublicContext
    ) -> Iterator[EncryptedBatch]:
        """Runs the model on independent groups packed by one spec; results in order.

        With a pool of several workers the groups are evaluated concurrently,
        on every core; `batches` is consumed lazily, a few groups ahead of
        the results, so a generator that encrypts them overlaps encryption
        with evaluation. Each group is checked as `evaluate` checks it.

        Raises:
            SecretKeyError, ContextMismatchError: As `evaluate`; also for
                groups packed by different specs.
            PartyError: A pool worker died or timed out (named).
        """
        source = iter(batches)
        first = next(source, None)
        if first is None:
            return
        program = self._checked(first, context)
        second = next(source, None)
        if second is None or getattr(self.pool, "workers", 1) <= 1:
            rest = () if second is None else itertools.chain((second,), source)
            for batch in itertools.chain((first,), rest):
                self._same_spec(first, batch)
                yield self.evaluate(batch, context)
            return
        sent: collections.deque[EncryptedBatch] = collections.deque()

        def checked() -> Iterator[EncryptedBatch]:
            for batch in itertools.chain((first, second), source):
                if batch is not first:
                    self._same_spec(first, batch)
                    self._checked(batch, context)
                sent.append(batch)
                yield batch

        for outputs in self.pool.map(program, context, checked()):
            batch = sent.popleft()
            yield EncryptedBatch(
                outputs, batch.n_samples, "outputs", batch.spec_id, batch.context_id
            )

    @staticmethod
    def _same_spec(first: EncryptedBatch, batch: Any) -> None:
        if getattr(batch, "spec_id", None) != first.spec_id:
            raise ContextMismatchError(
                f"Expected every group of one evaluate_many call packed by spec "
                f"{first.spec_id}. Received: a group packed by "
                f"{getattr(batch, 'spec_id', type(batch).__name__)}"
            )

    def _checked(self, batch: EncryptedBatch, context: PublicContext) -> PackedProgram:
        if not isinstance(context, PublicContext):
            if (
                getattr(context, "has_secret_key", False)
                or getattr(context, "is_private", lambda: False)()
            ):
                raise SecretKeyError(
                    "Expected a PublicContext. Received: an object holding the secret key; "
                    "a server must never hold it (send client.public_context(spec))"
                )
            raise ContextMismatchError(
                f"Expected a PublicContext. Received: {type(context).__name__}"
            )
        if context.parameters != self.parameters:
            raise ContextMismatchError(
                f"Expected a context for {self.parameters}. Received: {context.parameters}"
            )
        if not isinstance(batch, EncryptedBatch) or batch.role != "inputs":
            raise ContextMismatchError(
                "Expected an EncryptedBatch of inputs from HEClient.encrypt. Received: "
                f"{getattr(batch, 'role', type(batch).__name__)!r}"
            )
        if batch.context_id != context.fingerprint:
            raise ContextMismatchError(
                f"Expected ciphertexts under the given context ({context.fingerprint}). "
                f"Received: ciphertexts under {batch.context_id}, another key pair"
            )
        if batch.spec_id not in self._specs:
            raise ContextMismatchError(
                f"Expected ciphertexts packed with a spec from this server "
                f"({sorted(self._specs)}). Received: spec {batch.spec_id}"
            )
        program = self.program(self._specs[batch.spec_id])
        if not 1 <= batch.n_samples <= program.block:
            raise HEInputError(
                f"Expected 1 to {program.block} samples in a group packed by spec "
                f"{batch.spec_id}. Received: n_samples={batch.n_samples}"
            )
        if not context.covers(program.rotation_steps):
            missing = sorted(program.rotation_steps - (context.rotation_steps or set()))
            raise ContextMismatchError(
                f"Expected Galois keys for rotation steps {sorted(program.rotation_steps)}. "
                f"Received: a context without {missing}; build it with "
                f"client.public_context(spec)"
            )
        self._check_ciphertexts(batch, context, program)
        return program

    @staticmethod
    def _check_ciphertexts(
        batch: EncryptedBatch, context: PublicContext, program: PackedProgram
    ) -> None:
        import tenseal.sealapi as sealapi

        if batch.n_ciphertexts != program.input_layout.n_ciphertexts:
            raise ContextMismatchError(
                f"Expected {program.input_layout.n_ciphertexts} input ciphertexts. "
                f"Received: {batch.n_ciphertexts}"
            )
        if not batch.loaded:
            return  # checked as they load: here on first use, or in the pool's worker
        top = tuple(context.seal_context.first_parms_id())
        for ct in batch.ciphertexts:
            if (
                not isinstance(ct, sealapi.Ciphertext)
                or not sealapi.is_metadata_valid_for(ct, context.seal_context)
                or tuple(ct.parms_id()) != top
                or ct.size() != 2
                or ct.scale != context.parameters.scale
            ):
                raise ContextMismatchError(
                    "Expected fresh ciphertexts for these encryption parameters (2 polynomials, "
                    f"top level, scale 2^{context.parameters.scale_bits}). Received: a "
                    "ciphertext made under other parameters or already evaluated"
                )

    def decrypt(self, *args: Any, **kwargs: Any) -> Any:
        """Always raises: the server holds no secret key.

        Raises:
            SecretKeyError: Always.
        """
        raise SecretKeyError(
            "HEServer holds no secret key and cannot decrypt: only the HEClient that made "
            "the keys can. Send the EncryptedBatch back to it."
        )

    def __repr__(self) -> str:
        return (
            f"HEServer(depth={self.depth}, N={self.parameters.poly_modulus_degree}, "
            f"scale=2^{self.parameters.scale_bits})"
        )
