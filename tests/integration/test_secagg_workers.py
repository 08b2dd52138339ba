"""Secure aggregation on real `privkeras worker` processes over gRPC on 127.0.0.1.

Four workers (mutual TLS with development certificates, ports from the OS),
started by the fixture and always stopped by `local_owners`' context manager;
every network wait has a deadline. Each worker signs its round keys with its
TLS certificate's key (ECDSA P-256); the coordinator forwards the
certificates and the workers check them against their CA. Runtime: about a
minute on 2 shared cores (most of it TensorFlow starting in each worker).
"""

import hashlib

import keras
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from scipy import stats

import privkeras as pk
from privkeras.backends.federated import FederatedData, secagg, wire
from privkeras.backends.federated.remote import GrpcTransport
from privkeras.backends.federated.secagg.aggregation import SecAggPlusAggregator
from privkeras.backends.federated.secagg.identity import verify_signature
from privkeras.backends.federated.secagg.messages import AdvertiseKeys, MaskedInput, RoundSetup
from privkeras.backends.federated.secagg.owner import key_payload
from privkeras.errors import PartyError

FEATURES, CLASSES, HIDDEN = 6, 3, 256
NAMES = ["alice", "bob", "carol", "dave"]
WEIGHTS = FEATURES * HIDDEN + HIDDEN + HIDDEN * CLASSES + CLASSES


def _partitions():
    rng = np.random.default_rng(11)
    centers = rng.normal(size=(CLASSES, FEATURES)) * 2
    parts = []
    for size in (40, 30, 36, 24):
        y = rng.integers(0, CLASSES, size=size)
        parts.append(((centers[y] + rng.normal(size=(size, FEATURES))).astype("float32"), y))
    return parts


def _model(policy):
    keras.utils.set_random_seed(5)
    model = pk.PrivateSequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(HIDDEN, activation="relu"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        privacy=policy,
    )
    return model


def _fit(model, cluster):
    return model.fit(FederatedData(cluster.owners), batch_size=16, shuffle=False, verbose=0)


@pytest.fixture(scope="module")
def cluster():
    parts = _partitions()
    with pk.federated.local_owners(parts, names=NAMES) as owners:
        yield owners, parts


@pytest.fixture
def recorded(monkeypatch):
    """Every (owner, method, request bytes, answer bytes) the coordinator exchanges."""
    exchanges = []
    exchange = GrpcTransport._exchange

    def recording(self, method, data, timeout):
        answer = exchange(self, method, data, timeout)
        exchanges.append((self.owner_name, method, data, answer))
        return answer

    monkeypatch.setattr(GrpcTransport, "_exchange", recording)
    return exchanges


def test_distributed_dp_on_workers_is_accounted_by_the_engine_and_by_each_worker(cluster):
    """Runs first: the workers' ledgers hold only this job."""
    owners, _ = cluster
    policy = pk.Federated(rounds=2, min_owners=4, clip_norm=0.5, noise_multiplier=1.0,
                          delta=1e-3, secure_aggregation=True, dp="distributed", timeout=20.0)  # fmt: skip
    model = _model(policy)
    history = _fit(model, owners).history
    config = secagg.SecAggConfig(clip_norm=0.5, noise_multiplier=1.0, min_survivors=4)
    params = config.resolve(4, WEIGHTS)
    expected = [secagg.epsilon(params, rounds=r, delta=1e-3) for r in (1, 2)]
    np.testing.assert_allclose(history["epsilon"], expected, rtol=1e-12)
    for client in FederatedData(owners.owners).clients():
        spent = client.describe(timeout=10.0).spent_epsilon  # the worker's own ledger
        np.testing.assert_allclose(spent, expected[-1], rtol=1e-9)
        client.close()


def test_secure_rounds_on_workers_equal_plain_rounds_and_send_only_uniform_masked_vectors(
    cluster, recorded
):
    owners, parts = cluster
    plain = _model(pk.Federated(rounds=2, min_owners=4, timeout=20.0))
    _fit(plain, owners)
    del recorded[:]
    secure = _model(pk.Federated(rounds=2, min_owners=4, timeout=20.0, secure_aggregation=True))
    history = _fit(secure, owners).history
    assert history["owners"] == [4.0, 4.0]
    np.testing.assert_allclose(
        np.concatenate([w.ravel() for w in secure.get_weights()]),
        np.concatenate([w.ravel() for w in plain.get_weights()]),
        atol=2e-6,
    )
    masked = [
        MaskedInput.from_bytes(wire.decode(answer)[1]["masked_input"].tobytes()).vector
        for owner, method, _, answer in recorded
        if owner == "bob" and method == "train"
    ]
    vector = np.concatenate(masked)
    assert vector.size == 2 * (WEIGHTS + 1)
    bits = ((vector[:, None] >> np.arange(32, dtype=np.uint32)) & np.uint32(1)).mean(axis=0)
    assert np.all(np.abs(bits - 0.5) < 6 * 0.5 / np.sqrt(vector.size)), bits
    assert stats.chisquare(np.bincount(vector.view(np.uint8), minlength=256)).pvalue > 1e-4
    for name, (x, _) in zip(NAMES, parts):  # and no row in anything a worker sent
        sent = b"".join(answer for owner, _, _, answer in recorded if owner == name)
        for row in x:
            assert row.astype("<f4").tobytes() not in sent


def test_each_worker_signs_its_keys_with_its_tls_certificate(cluster, recorded):
    owners, _ = cluster
    model = _model(pk.Federated(rounds=1, min_owners=4, timeout=20.0, secure_aggregation=True))
    _fit(model, owners)
    adverts = [r for r in recorded if r[1] == "aggregation/secagg/advertise_keys"]
    checked = set()
    for owner, _, request, answer in adverts:
        _, arrays = wire.decode(answer)
        if "certificate" not in arrays:
            continue
        setup = RoundSetup.from_bytes(wire.decode(request)[1]["message"].tobytes())
        keys = AdvertiseKeys.from_bytes(arrays["message"].tobytes())
        pem = (owners.certs_dir / f"{owner}.pem").read_bytes()
        mine = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        assert arrays["certificate"].tobytes() == mine  # its mTLS certificate, ECDSA P-256
        digest = hashlib.sha256(setup.digest_bytes()).digest()
        payload = key_payload(digest, setup.recipient, owner, keys)
        key = x509.load_der_x509_certificate(mine).public_key()
        assert verify_signature(key, payload, keys.signature)
        assert not verify_signature(key, payload[::-1], keys.signature)
        checked.add(owner)
    assert checked == set(NAMES)


def test_a_coordinator_that_substitutes_a_certificate_is_refused_by_the_workers(
    cluster, monkeypatch, tmp_path
):
    from privkeras.net.certs import make_dev_certs

    owners, _ = cluster
    make_dev_certs(tmp_path, ["bob"])  # a certificate for bob from a CA the workers do not trust
    forged = x509.load_pem_x509_certificate((tmp_path / "bob.pem").read_bytes())
    forged = forged.public_bytes(serialization.Encoding.DER)
    real = SecAggPlusAggregator._certificate
    monkeypatch.setattr(
        SecAggPlusAggregator,
        "_certificate",
        lambda self, name: forged if name == "bob" else real(self, name),
    )
    model = _model(pk.Federated(rounds=1, min_owners=4, timeout=20.0, secure_aggregation=True))
    with pytest.raises(secagg.SecAggRoundError) as info:
        _fit(model, owners)
    assert info.value.stage == "share_keys"
    assert "AuthenticationError" in str(info.value) and "not trusted" in str(info.value)


def test_malformed_aggregation_requests_get_errors_and_the_worker_keeps_serving(cluster):
    owners, _ = cluster
    model = _model(pk.Federated(rounds=1, min_owners=4, timeout=20.0, secure_aggregation=True))
    _fit(model, owners)
    job_id = model.engine._job.job_id
    client = FederatedData([owners.owners[1]]).clients()[0]
    try:
        for fields, arrays in (
            ({"job_id": job_id, "round": 7}, {"message": np.frombuffer(b"PKSA junk", np.uint8)}),
            ({"job_id": job_id, "round": 7}, {"message": np.zeros(3, np.float32)}),
            ({"job_id": job_id, "round": "x"}, {}),
            ({"job_id": "no such job"}, {}),
        ):
            for message in ("advertise_keys", "share_keys", "unmask"):
                with pytest.raises(PartyError, match="'bob'"):
                    client.call(f"aggregation/secagg/{message}", fields, arrays, timeout=10.0)
        garbage = client.transport.request("aggregation/secagg/unmask", b"\x00" * 40, 10.0)
        assert "error" in wire.decode(garbage)[0]
    finally:
        client.close()
    history = _fit(model, owners).history  # the same job again: every worker still serves
    assert history["owners"] == [4.0]
