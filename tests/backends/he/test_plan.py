"""How the server plans a batch: packing, groups and workers, from the cost model (no processes)."""

import numpy as np
import pytest

from privkeras.backends.he import EncryptedBatch, HEClient, HEServer
from privkeras.backends.he.errors import ContextMismatchError
from privkeras.backends.he.planning import REFRESH


class _PlanningPool:
    """What `HEServer.plan` reads from an `EvaluationPool`: its size and start-up."""

    def __init__(self, workers, start_seconds):
        self.workers, self.start_seconds = workers, start_seconds

    def expected_start_seconds(self):
        return self.start_seconds


@pytest.fixture(scope="module")
def mlp(digits_mlp):
    return digits_mlp[0]


def test_without_a_pool_every_plan_runs_in_process(mlp):
    server = HEServer(mlp)
    for n in (1, 449, 4096):
        plan = server.plan(n)
        assert plan.workers == 1 and not plan.parallel
    assert server.plan(1).block == 1  # the single-sample latency path
    assert server.plan(4096).groups == 1  # a full batch fills the slots


def test_a_started_pool_takes_a_full_batch_and_small_ones_stay_in_process(mlp):
    server = HEServer(mlp, pool=_PlanningPool(workers=2, start_seconds=0.0))
    full = server.plan(4096)
    assert full.parallel and full.groups >= 2 and full.workers == 2
    assert full.estimated_seconds < HEServer(mlp).plan(4096).estimated_seconds
    assert not server.plan(1).parallel  # one group: nothing to share
    assert not server.plan(64).parallel


def test_start_up_is_priced_until_the_pool_runs(mlp):
    idle = HEServer(mlp, pool=_PlanningPool(workers=2, start_seconds=60.0))
    assert not idle.plan(4096).parallel  # a minute of start-up never pays for one batch
    fixed = HEServer(mlp, pool=_PlanningPool(workers=2, start_seconds=0.0)).plan(4096, block=512)
    assert fixed.block == 512 and fixed.groups == 8 and fixed.parallel


def test_measured_times_overrule_the_model_and_its_choice_is_measured_again(mlp):
    server = HEServer(mlp, pool=_PlanningPool(workers=2, start_seconds=0.0))
    modelled = server.plan(4096)
    assert modelled.parallel
    server.record(modelled, 10.0 * modelled.model_ms * 1e-3)  # a busy machine: 10x slower
    serial = server.plan(4096, workers=1)
    server.record(serial, serial.model_ms * 1e-3)
    chosen = [server.plan(4096) for _ in range(3)]
    assert not any(plan.parallel for plan in chosen)  # the measurements win
    for _ in range(REFRESH - 1):
        server.record(server.plan(4096), serial.model_ms * 1e-3)
    assert server.plan(4096).parallel  # the model's choice, measured again
    assert server.plan(4096, workers=1).workers == 1  # a forced route stays forced


def test_evaluate_many_without_a_pool_is_evaluate_in_order(small_model):
    model, x = small_model
    server = HEServer(model)
    spec = server.packing(block=4)
    client = HEClient(spec.parameters)
    public = client.public_context(spec)
    batches = [client.encrypt(x[s : s + 4], spec) for s in range(0, 12, 4)]
    outputs = [client.decrypt(out, spec) for out in server.evaluate_many(iter(batches), public)]
    expected = [client.decrypt(server.evaluate(b, public), spec) for b in batches]
    np.testing.assert_allclose(np.concatenate(outputs), np.concatenate(expected), atol=1e-6)
    other = server.packing(block=8)
    both = client.public_context(rotation_steps={*spec.rotation_steps, *other.rotation_steps})
    mixed = [batches[0], client.encrypt(x[:8], other)]
    with pytest.raises(ContextMismatchError, match="one evaluate_many call packed by spec"):
        list(server.evaluate_many(mixed, both))


def test_unloaded_groups_load_and_check_on_first_use(small_model):
    model, x = small_model
    server = HEServer(model)
    spec = server.packing(block=4)
    client = HEClient(spec.parameters)
    public = client.public_context(spec)
    batch = EncryptedBatch.from_bytes(client.encrypt_to_bytes(x[:4], spec), public, load=False)
    assert not batch.loaded and batch.n_ciphertexts == spec.input_layout.n_ciphertexts
    out = server.evaluate(batch, public)
    assert batch.loaded
    expected = client.decrypt(server.evaluate(client.encrypt(x[:4], spec), public), spec)
    np.testing.assert_allclose(client.decrypt(out, spec), expected, atol=1e-6)
