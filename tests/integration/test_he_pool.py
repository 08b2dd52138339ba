"""HE evaluation on every core: real worker processes (and threads) against the in-process result.

Every pool is closed in `finally`; a test that stops or kills a worker
kills it for good before it ends. Runtime: about 15 s on 2 cores.
"""

import os
import signal
import time

import keras
import numpy as np
import pytest

import privkeras as pk
from privkeras.backends.he import EncryptedBatch, HEClient, HEInputError, HEServer
from privkeras.backends.he.parallel import THREAD_SCALING, EvaluationPool, _WorkerProcess
from privkeras.backends.he.wire import seal_to_bytes
from privkeras.errors import PartyError
from privkeras.layers import PolynomialActivation


@pytest.fixture(scope="module")
def setup():
    """The digits MLP's shape (64-32-square-10) with random weights, groups of 64 rows."""
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32),
            PolynomialActivation("square"),
            keras.layers.Dense(10),
        ]
    )
    x = np.random.default_rng(6).uniform(-0.5, 0.5, (5 * 64, 64))
    server = HEServer(model)
    spec = server.packing(block=64)
    client = HEClient(spec.parameters)
    public = client.public_context(spec)
    serial = [
        client.decrypt(server.evaluate(client.encrypt(x[s : s + 64], spec), public), spec)
        for s in range(0, len(x), 64)
    ]
    return model, x, spec, client, public, np.concatenate(serial)


def _groups(client, spec, public, x):
    for start in range(0, len(x), 64):
        yield EncryptedBatch.from_bytes(
            client.encrypt_to_bytes(x[start : start + 64], spec), public
        )


def _parallel(pool, setup):
    model, x, spec, client, public, _ = setup
    server = HEServer(model, pool=pool)
    server.packing(block=64)
    outputs = server.evaluate_many(_groups(client, spec, public, x), public)
    return np.concatenate([client.decrypt(out, spec) for out in outputs])


@pytest.mark.parametrize("executor", ["processes", "threads"])
def test_a_pool_gives_the_in_process_result(executor, setup):
    pool = EvaluationPool(workers=3, executor=executor)
    try:
        np.testing.assert_allclose(_parallel(pool, setup), setup[-1], atol=1e-6)
        described = pool.describe()
        assert described["executor"] == executor
        assert described["processes"] == (2 if executor == "processes" else 0)
        np.testing.assert_allclose(_parallel(pool, setup), setup[-1], atol=1e-6)  # warm workers
    finally:
        pool.close()


def test_auto_chooses_threads_only_when_they_were_measured_to_scale(setup):
    pool = EvaluationPool(workers=2)
    try:
        np.testing.assert_allclose(_parallel(pool, setup), setup[-1], atol=1e-6)
        described = pool.describe()
        scales = described["thread_speedup"] >= THREAD_SCALING * 2
        assert described["executor"] == ("threads" if scales else "processes")
        print(f"measured thread speedup {described['thread_speedup']:.2f} with 2 threads")
    finally:
        pool.close()


def test_workers_receive_no_secret_key(setup, monkeypatch):
    _, _, _, client, _, _ = setup
    sent = []
    original = _WorkerProcess.send
    monkeypatch.setattr(
        _WorkerProcess,
        "send",
        lambda self, m, deadline: (sent.append(m), original(self, m, deadline)),
    )
    pool = EvaluationPool(workers=2, executor="processes")
    try:
        _parallel(pool, setup)
    finally:
        pool.close()
    secret = seal_to_bytes(client._secret_key)
    assert len(sent) >= 4 and secret[64:1088] not in b"".join(sent)


def test_a_killed_worker_is_a_party_error_naming_it_and_the_pool_recovers(setup):
    pool = EvaluationPool(workers=2, executor="processes", timeout=30)
    try:
        _parallel(pool, setup)
        victim = pool._backend.workers[0].process
        os.kill(victim.pid, signal.SIGKILL)
        with pytest.raises(PartyError, match=f"HE evaluation worker 0 \\(pid {victim.pid}\\)"):
            _parallel(pool, setup)
        assert not pool.started  # closed: the next use starts fresh workers
        np.testing.assert_allclose(_parallel(pool, setup), setup[-1], atol=1e-6)
    finally:
        pool.close()


def test_a_malformed_group_is_an_input_error_and_the_pool_goes_on(setup):
    model, x, spec, client, public, expected = setup
    pool = EvaluationPool(workers=2, executor="processes")
    server = HEServer(model, pool=pool)
    server.packing(block=64)
    evaluated = server.evaluate(client.encrypt(x[:64], spec), public).to_bytes()
    forged = EncryptedBatch.from_bytes(evaluated, public, load=False)
    forged.role = "inputs"  # an evaluated ciphertext passed off as a fresh one

    def groups():
        yield from _groups(client, spec, public, x[:128])
        yield forged

    try:
        with pytest.raises(HEInputError, match="already evaluated"):
            list(server.evaluate_many(groups(), public))
        np.testing.assert_allclose(_parallel(pool, setup), expected, atol=1e-6)
    finally:
        pool.close()


def test_a_hung_worker_times_out(setup):
    pool = EvaluationPool(workers=2, executor="processes", timeout=120)
    stopped = None
    try:
        _parallel(pool, setup)  # started and loaded, with time to spare on a busy machine
        pool.timeout = 2
        stopped = pool._backend.workers[0].process
        os.kill(stopped.pid, signal.SIGSTOP)
        began = time.monotonic()
        with pytest.raises(PartyError, match="no answer within 2 s"):
            _parallel(pool, setup)
        assert time.monotonic() - began < 15
    finally:
        pool.close()  # kills what does not exit
        if stopped is not None and stopped.poll() is None:
            stopped.kill()
            stopped.wait()


def test_predict_runs_large_batches_on_the_pool(setup):
    model, x, _, _, _, _ = setup
    private = pk.PrivateSequential([keras.Input((64,)), *model.layers], name="pooled")
    x = np.tile(x, (13, 1))[:4096]
    expected = private.predict(x, verbose=0)
    private.compile(privacy="he")
    engine = private.engine
    try:
        engine.pool().start()
        encrypted = private.predict(x, verbose=0)
        assert engine.last_run["workers"] == 2 and engine.last_run["groups"] >= 2
        np.testing.assert_allclose(encrypted, expected, atol=1e-3)
        engine.max_workers = 1
        private.predict(x[:256], verbose=0)
        assert engine.last_run["workers"] == 1
    finally:
        if engine._pool is not None:
            engine._pool.close()
