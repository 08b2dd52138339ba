"""`Federated(secure_aggregation=True)` end to end through the engine, with simulated owners.

Simulated owners run the workers' code and messages (`FederatedData.simulate`);
tests/integration/test_secagg_*.py run the same rounds on worker processes.
The oracle is the plain sum of the contributions of the owners the aggregator
says are in the sum (and, end to end, the same round with plain aggregation).
"""

import warnings

import numpy as np
import pytest
from scipy import stats

import privkeras as pk
from privkeras.backends.federated import FederatedData, secagg
from privkeras.backends.federated.secagg.aggregation import SecAggPlusAggregator, planned_epsilon
from privkeras.backends.federated.secagg.messages import MaskedInput, ShareKeys
from privkeras.errors import AuthenticationError, CapabilityError, PartyError, PrivacyPolicyError

from .conftest import flat, make_model, make_partitions
from .secagg_engine_helpers import Spy, StageOwner, wide_model

TEN = [f"o{i}" for i in range(10)]
DROPPED = ["o2", "o5", "o8"]


def _fit(model, owners, rounds_verbose=0):
    return model.fit(FederatedData(owners), batch_size=16, shuffle=False, verbose=rounds_verbose)


def _owners(parts, names, fail_at=None, failing=(), rewrite=None):
    clients = FederatedData.simulate(parts, names=names).clients()
    return [
        StageOwner(c, fail_at if c.name in failing else None, rewrite if rewrite else None)
        for c in clients
    ]


@pytest.fixture
def spy(monkeypatch):
    return Spy(monkeypatch)


# -- the sum, and only the sum ----------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {},  # FedAvg: example-weighted updates, each coordinate in [-16, 16]
        {"clip_norm": 0.5, "noise_multiplier": 0.0},  # clipped, uniform weights
        {"clip_norm": 0.5, "noise_multiplier": 0.0, "adaptive_clipping": True},
    ],
    ids=["fedavg", "clipped", "adaptive"],
)
def test_a_secure_round_equals_the_plain_round(options, spy):
    parts = make_partitions(sizes=(40, 30, 50, 20))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # noise_multiplier=0: not private (on purpose here)
        plain = make_model(pk.Federated(rounds=2, min_owners=4, **options))
        secure = make_model(
            pk.Federated(rounds=2, min_owners=4, secure_aggregation=True, **options)
        )
    plain_history = plain.fit(FederatedData.simulate(parts), shuffle=False, verbose=0).history
    history = secure.fit(FederatedData.simulate(parts), shuffle=False, verbose=0).history
    np.testing.assert_allclose(flat(secure.get_weights()), flat(plain.get_weights()), atol=2e-6)
    assert history["owners"] == [4.0, 4.0]
    if options.get("adaptive_clipping"):
        np.testing.assert_allclose(history["clip_norm"], plain_history["clip_norm"], rtol=1e-6)
    for index in range(2):
        spy.assert_exact(index)
    log = secure.privacy_report()["round_log"][-1]["aggregation"]
    assert set(log["stages"]) == set(secagg.STAGES) and log["neighbours"] == 3
    assert secure.privacy_report()["secure_aggregation"].startswith("SecAgg+")


def _bits_and_bytes(vector):
    bits = (vector[:, None] >> np.arange(32, dtype=np.uint32)) & np.uint32(1)
    return bits.mean(axis=0), np.bincount(vector.view(np.uint8), minlength=256)


@pytest.mark.parametrize("learning_rate", [0.0, 0.5], ids=["zero-update", "trained"])
def test_what_the_coordinator_receives_from_one_owner_is_uniform(spy, learning_rate):
    """Through the engine: the masked vectors one owner sends in three rounds (4,804 values
    each), and its share ciphertexts, pass bit-balance and chi-square tests; the same tests
    reject the plain contributions, so they can tell."""
    parts = make_partitions(sizes=(30, 30, 30, 30, 30))
    shares = []

    def capture(direction, message, fields, arrays):
        if direction == "up" and message == "share_keys":
            shares.append(ShareKeys.from_bytes(arrays["message"].tobytes()))
        return fields, arrays

    owners = _owners(parts, ["a", "b", "c", "d", "e"])
    owners[2] = StageOwner(owners[2].inner, rewrite=capture)
    model = wide_model(pk.Federated(rounds=3, min_owners=5, secure_aggregation=True), learning_rate)
    _fit(model, owners)
    vector = np.concatenate(
        [MaskedInput.from_bytes(p["c"][1]["masked_input"].tobytes()).vector for p in spy.payloads]
    )
    assert vector.size == 3 * 4804
    ones, byte_counts = _bits_and_bytes(vector)
    assert np.all(np.abs(ones - 0.5) < 6 * 0.5 / np.sqrt(vector.size)), ones
    assert stats.chisquare(byte_counts).pvalue > 1e-4
    assert stats.kstest(vector / 2.0**32, "uniform").pvalue > 1e-4
    blob = b"".join(e.ciphertext for message in shares for e in message.shares)
    assert stats.chisquare(np.bincount(np.frombuffer(blob, np.uint8), minlength=256)).pvalue > 1e-4
    for name in ("a", "c"):  # each owner's contribution, as plain aggregation would have sent it
        plain = np.concatenate([spy.contributions[(r, name)] for r in range(3)]).view(np.uint32)
        ones, byte_counts = _bits_and_bytes(plain)
        assert stats.chisquare(byte_counts).pvalue < 1e-10


# -- dropouts: a third of ten owners at each stage ---------------------------------------------
@pytest.mark.parametrize("stage", secagg.STAGES)
def test_a_third_of_ten_owners_drop_at_each_stage_and_the_round_completes(stage, spy):
    parts = make_partitions(sizes=(12,) * 10)
    owners = _owners(parts, TEN, fail_at=stage, failing=DROPPED)
    model = make_model(pk.Federated(rounds=1, secure_aggregation=True))
    history = _fit(model, owners).history
    spy.assert_exact()
    summed = spy.sums[-1]["summed"]
    log = model.privacy_report()["round_log"][0]
    assert set(log["dropped"]) == set(DROPPED)
    if stage == "unmasking":  # their masked inputs arrived: their updates are in the sum
        assert summed == TEN and history["owners"] == [10.0]
        assert all("is in the sum" in log["dropped"][name] for name in DROPPED)
    else:
        assert summed == [n for n in TEN if n not in DROPPED] and history["owners"] == [7.0]
    assert log["aggregation"]["dropped_at"][stage] == DROPPED


@pytest.mark.parametrize("stage", secagg.STAGES)
def test_four_of_ten_dropping_fails_naming_the_stage_and_the_owners(stage):
    parts = make_partitions(sizes=(12,) * 10)
    failing = [*DROPPED, "o9"]
    owners = _owners(parts, TEN, fail_at=stage, failing=failing)
    model = make_model(pk.Federated(rounds=1, secure_aggregation=True))
    before = flat(model.get_weights())
    with pytest.raises(secagg.SecAggRoundError) as info:
        _fit(model, owners)
    assert isinstance(info.value, PartyError) and info.value.stage == stage
    assert f"stage {stage!r}" in str(info.value) and "round 1" in str(info.value)
    assert all(repr(name) in str(info.value) for name in failing)
    if stage != "unmasking":
        assert info.value.owners == tuple(failing)
    np.testing.assert_array_equal(flat(model.get_weights()), before)  # no aggregate applied


def test_dropouts_end_to_end_equal_the_plain_round_over_the_survivors():
    """Three owners drop after sharing keys: the model equals plain FedAvg over the seven."""
    parts = make_partitions(sizes=(12,) * 10)
    secure = make_model(pk.Federated(rounds=1, secure_aggregation=True))
    _fit(secure, _owners(parts, TEN, fail_at="masked_input", failing=DROPPED))
    plain = make_model(pk.Federated(rounds=1))
    _fit(plain, _owners(parts, TEN, fail_at="masked_input", failing=DROPPED))
    assert plain.privacy_report()["round_log"][0]["answered"] == [
        n for n in TEN if n not in DROPPED
    ]
    np.testing.assert_allclose(flat(secure.get_weights()), flat(plain.get_weights()), atol=2e-6)


@pytest.mark.slow
def test_sixty_owners_with_a_third_dropping_across_stages(spy):
    """At scale (60 simulated owners, complete graph of degree 59, threshold 39): 10 drop
    after sharing keys and 10 during unmasking; the sum is the 50 whose inputs arrived."""
    names = [f"n{i:02d}" for i in range(60)]
    parts = make_partitions(sizes=(4,) * 60)
    clients = FederatedData.simulate(parts, names=names).clients()
    owners = [
        StageOwner(c, "masked_input" if i % 6 == 1 else "unmasking" if i % 6 == 4 else None)
        for i, c in enumerate(clients)
    ]
    model = make_model(pk.Federated(rounds=1, secure_aggregation=True))
    history = _fit(model, owners).history
    spy.assert_exact()
    assert history["owners"] == [50.0] and len(spy.sums[-1]["summed"]) == 50
    report = spy.sums[-1]["report"]
    assert report["neighbours"] == 59 and report["min_survivors"] == 40


def test_an_owner_that_restarted_is_configured_again_and_takes_part(spy):
    """o1 loses its jobs between rounds (a restarted worker): at the next round's key
    exchange it says so, gets the job again, and its certificates are sent again."""
    import keras

    parts = make_partitions(sizes=(12,) * 4)
    data = FederatedData.simulate(parts, names=["o0", "o1", "o2", "o3"])
    service = data.clients()[1].transport.service

    class Restart(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                service._jobs.clear()

    model = make_model(pk.Federated(rounds=2, min_owners=4, secure_aggregation=True))
    history = model.fit(data, batch_size=16, verbose=0, callbacks=[Restart()]).history
    assert history["owners"] == [4.0, 4.0]
    spy.assert_exact(1)
    second = model.privacy_report()["round_log"][1]["aggregation"]["stages"]["share_keys"]
    assert second["bytes_down"]["o1"] > second["bytes_down"]["o0"] + 3 * 200  # 3 certificates


def test_secure_aggregation_needs_two_owners():
    model = make_model(pk.Federated(rounds=1, min_owners=1, secure_aggregation=True))
    with pytest.raises(PrivacyPolicyError, match="at least 2 owners"):
        model.fit(FederatedData.simulate(make_partitions(sizes=(20,))), verbose=0)


# -- keys bound to credentials ------------------------------------------------------------------
def test_a_coordinator_that_substitutes_a_key_is_refused_by_the_owners(monkeypatch):
    from cryptography.hazmat.primitives.asymmetric import x25519

    from privkeras.backends.federated.secagg import coordinator as coordinator_module

    close = coordinator_module.SecAggCoordinator.close_advertise_keys

    def substituting(self):
        outgoing = close(self)
        mine = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
        for name, message in outgoing.items():
            entries = tuple(
                e if e.name != "o1" else type(e)(**{**e.__dict__, "mask_key": mine})
                for e in message.neighbours
            )
            outgoing[name] = type(message)(message.round_id, message.recipient, entries)
        return outgoing

    monkeypatch.setattr(coordinator_module.SecAggCoordinator, "close_advertise_keys", substituting)
    model = make_model(pk.Federated(rounds=1, secure_aggregation=True))
    with pytest.raises(secagg.SecAggRoundError) as info:
        _fit(model, _owners(make_partitions(sizes=(12,) * 4), ["o0", "o1", "o2", "o3"]))
    assert info.value.stage == "share_keys"
    assert "AuthenticationError" in str(info.value) and "'o1'" in str(info.value)
    assert "signature that does not verify" in str(info.value)


def test_a_certificate_from_another_authority_is_refused_by_the_owners(monkeypatch):
    impostor = secagg.SimulatedAuthority().identity("o1").certificate
    real = SecAggPlusAggregator._certificate
    monkeypatch.setattr(
        SecAggPlusAggregator,
        "_certificate",
        lambda self, name: impostor if name == "o1" else real(self, name),
    )
    model = make_model(pk.Federated(rounds=1, secure_aggregation=True))
    with pytest.raises(secagg.SecAggRoundError, match="not trusted"):
        _fit(model, _owners(make_partitions(sizes=(12,) * 4), ["o0", "o1", "o2", "o3"]))


def test_an_owner_without_a_certificate_refuses_secure_aggregation():
    data = FederatedData.simulate(make_partitions(sizes=(12,) * 3))
    for client in data.clients():
        client.transport.service._identity = None
    model = make_model(pk.Federated(rounds=1, secure_aggregation=True))
    with pytest.raises(AuthenticationError, match="no certificate"):
        model.fit(data, verbose=0)


def test_certificates_travel_once_per_job():
    """Round 1: each owner sends its certificate and receives its three neighbours'; round 2:
    none (about 300 bytes each for a simulated owner's Ed25519 certificate)."""
    model = make_model(pk.Federated(rounds=2, min_owners=4, secure_aggregation=True))
    _fit(model, _owners(make_partitions(sizes=(12,) * 4), ["o0", "o1", "o2", "o3"]))
    first, second = (r["aggregation"]["stages"] for r in model.privacy_report()["round_log"])
    for name in ("o0", "o3"):
        sent = (
            first["advertise_keys"]["bytes_up"][name] - second["advertise_keys"]["bytes_up"][name]
        )
        received = (
            first["share_keys"]["bytes_down"][name] - second["share_keys"]["bytes_down"][name]
        )
        assert 200 < sent < 600 and 3 * 200 < received < 3 * 600


# -- distributed DP -----------------------------------------------------------------------------
def _distributed(**options):
    base = {"rounds": 1, "clip_norm": 0.1, "noise_multiplier": 1.0, "delta": 1e-3}
    return pk.Federated(secure_aggregation=True, dp="distributed", **{**base, **options})


@pytest.mark.parametrize("failing", [[], DROPPED], ids=["all", "three-dropped"])
def test_the_owners_noise_in_the_sum_is_calibrated_to_the_minimum_survivors(
    spy, monkeypatch, failing
):
    """The coordinator draws no noise; the sum's noise has the variance the owners' discrete
    Gaussians give: at least (z C)^2, exactly that scaled by n / min_survivors."""
    from privkeras.core.random import SecureStream

    def no_coordinator_noise(*args, **kwargs):
        raise AssertionError("the coordinator drew Gaussian noise under dp='distributed'")

    monkeypatch.setattr(SecureStream, "gaussian", no_coordinator_noise)
    parts = make_partitions(sizes=(12,) * 10)
    model = wide_model(_distributed(noise_multiplier=2.0))
    _fit(model, _owners(parts, TEN, fail_at="masked_input", failing=failing))
    residual, record = spy.residual()
    report = record["report"]
    n, n_min = len(record["summed"]), report["min_survivors"]
    expected = np.sqrt(n * report["noise_variance"]) * report["granularity"]
    assert n_min == 7 and residual.size == 4803
    np.testing.assert_allclose(residual.std(), expected, rtol=0.05)
    assert expected >= 2.0 * 0.1 * np.sqrt(n / n_min) * (1 - 1e-9)
    assert abs(residual.mean()) < 5 * expected / np.sqrt(residual.size)


def test_central_dp_with_secure_aggregation_has_the_coordinator_add_the_noise(spy):
    parts = make_partitions(sizes=(12,) * 4)
    secure = wide_model(pk.Federated(rounds=2, min_owners=4, clip_norm=0.1, noise_multiplier=1.0,
                                     delta=1e-3, secure_aggregation=True))  # fmt: skip
    plain = wide_model(pk.Federated(rounds=2, min_owners=4, clip_norm=0.1, noise_multiplier=1.0,
                                    delta=1e-3))  # fmt: skip
    history = _fit(secure, _owners(parts, ["a", "b", "c", "d"])).history
    spy.assert_exact()  # the owners add nothing: the unmasked sum is exact
    plain_history = _fit(plain, _owners(parts, ["a", "b", "c", "d"])).history
    assert history["epsilon"] == plain_history["epsilon"]
    report = secure.privacy_report()
    assert "coordinator (dp='central'" in report["guarantee"]
    assert report["accountant"].startswith("pld")


def test_distributed_epsilon_is_the_accountants_every_round_and_shown_in_the_bar(spy, capsys):
    parts = make_partitions(sizes=(12,) * 5)
    model = make_model(_distributed(rounds=3, min_owners=5))
    history = _fit(model, _owners(parts, list("abcde")), rounds_verbose=2).history
    d = sum(w.size for w in model.get_weights())
    config = secagg.SecAggConfig(clip_norm=0.1, noise_multiplier=1.0, min_survivors=5)
    params = config.resolve(5, d)  # min_owners=5: every owner must answer
    expected = [secagg.epsilon(params, rounds=r, delta=1e-3) for r in (1, 2, 3)]
    np.testing.assert_allclose(history["epsilon"], expected, rtol=1e-12)
    assert "epsilon: " in capsys.readouterr().out
    report = model.privacy_report()
    assert report["epsilon"] == history["epsilon"][-1]
    assert report["accountant"].startswith("rdp") and "owners before masking" in report["guarantee"]


def test_owners_account_the_distributed_epsilon_in_their_own_ledgers():
    parts = make_partitions(sizes=(12,) * 4)
    data = FederatedData.simulate(parts, max_epsilon=50.0, delta=1e-3)
    model = make_model(_distributed(rounds=2, min_owners=4))
    history = model.fit(data, batch_size=16, verbose=0).history
    for client in data.clients():
        service = client.transport.service
        (spent,) = service.ledger.jobs.values()
        np.testing.assert_allclose(spent, history["epsilon"][-1], rtol=1e-9)
        plan = next(iter(service._jobs.values())).spec.client_dp
        assert spent == planned_epsilon(plan, 2, 1e-3)


def test_an_owner_refuses_a_round_with_less_noise_than_its_job_declared(monkeypatch):
    config = SecAggPlusAggregator._config

    def weaker(self, context, n):
        real = config(self, context, n)
        return secagg.SecAggConfig(
            clip_norm=real.clip_norm, noise_multiplier=real.noise_multiplier / 2
        )

    monkeypatch.setattr(SecAggPlusAggregator, "_config", weaker)
    model = make_model(_distributed(min_owners=4))
    with pytest.raises(secagg.SecAggRoundError) as info:
        _fit(model, _owners(make_partitions(sizes=(12,) * 4), ["o0", "o1", "o2", "o3"]))
    assert info.value.stage == "advertise_keys" and "noise_multiplier >= 1.0" in str(info.value)


def test_target_epsilon_is_calibrated_with_the_distributed_accountant():
    parts = make_partitions(sizes=(12,) * 4)
    model = make_model(_distributed(rounds=3, min_owners=4, noise_multiplier=None,
                                    target_epsilon=6.0))  # fmt: skip
    history = _fit(model, _owners(parts, ["o0", "o1", "o2", "o3"])).history
    assert 0.97 * 6.0 <= history["epsilon"][-1] <= 6.0


def test_distributed_dp_refuses_adaptive_clipping():
    model = make_model(_distributed(adaptive_clipping=True))
    with pytest.raises(CapabilityError, match="adaptive_clipping"):
        _fit(model, _owners(make_partitions(sizes=(12,) * 3), ["a", "b", "c"]))
