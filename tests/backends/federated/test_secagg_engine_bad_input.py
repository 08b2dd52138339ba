"""Secure aggregation at the engine/owner boundary: bad input drops and names its sender.

A misbehaving owner (malformed or wrong-length masked vectors, wrong array
types, duplicates, replays, impersonation, shares that do not reconstruct) is
dropped from the round and named; the round's sum is then the plain sum of
the others' contributions, or the round fails with a `PartyError`. The fuzz
tests mutate every message type, both directions, as the engine carries them
(the owner protocol's fields and arrays around the SecAgg+ bytes), and throw
bytes at an owner's aggregation handler.
"""

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import privkeras as pk
from privkeras.backends.federated import FederatedData, accounting, secagg, server_optimizers, wire
from privkeras.backends.federated.coordinator import CohortRunner, FederatedRound
from privkeras.backends.federated.engine import _secure_job
from privkeras.backends.federated.local_training import WeightLayout
from privkeras.backends.federated.secagg import owner as owner_module
from privkeras.backends.federated.secagg.aggregation import SecAggPlusAggregator
from privkeras.backends.federated.secagg.messages import MaskedInput
from privkeras.errors import PartyError

from .conftest import make_model, make_partitions
from .secagg_engine_helpers import Spy, StageOwner

NAMES = [f"o{i}" for i in range(6)]


@pytest.fixture
def spy(monkeypatch):
    return Spy(monkeypatch)


def _fit(owners, rounds=1):
    model = make_model(pk.Federated(rounds=rounds, secure_aggregation=True))
    model.fit(FederatedData(owners), batch_size=16, shuffle=False, verbose=0)
    return model


def _with(rewrites):
    """Simulated owners; `rewrites[name]` rewrites what that owner sends or receives."""
    clients = FederatedData.simulate(make_partitions(sizes=(12,) * 6), names=NAMES).clients()
    return [StageOwner(c, rewrite=rewrites.get(c.name)) for c in clients]


def _payload(rewrite_bytes=None, rewrite_arrays=None, message="train", key="masked_input"):
    def rewrite(direction, name, fields, arrays):
        if direction != "up" or name != message:
            return fields, arrays
        arrays = dict(arrays)
        if rewrite_arrays is not None:
            return fields, rewrite_arrays(arrays)
        data = rewrite_bytes(arrays[key].tobytes())
        arrays[key] = np.frombuffer(data, np.uint8)
        return fields, arrays

    return rewrite


def _shorter(data):
    message = MaskedInput.from_bytes(data)
    return MaskedInput(message.round_id, message.sender, message.vector[:-1]).to_bytes()


@pytest.mark.parametrize(
    "rewrite, reason",
    [
        (_payload(_shorter), "wrong length"),
        (_payload(lambda d: d[:-3]), "malformed"),
        (_payload(lambda d: d + d), "malformed"),  # a duplicate in the same answer
        (_payload(lambda d: b"\x00" * len(d)), "malformed"),
        (
            _payload(
                rewrite_arrays=lambda a: {**a, "masked_input": a["masked_input"].astype("<f4")}
            ),
            "1-D uint8",
        ),
        (_payload(rewrite_arrays=lambda a: {}), "Received: None"),
    ],
    ids=["wrong-length", "truncated", "duplicated", "zeros", "wrong-dtype", "missing"],
)
def test_a_bad_masked_input_drops_its_sender_and_the_sum_is_the_others(spy, rewrite, reason):
    model = _fit(_with({"o2": rewrite}))
    dropped = model.privacy_report()["round_log"][0]["dropped"]
    assert list(dropped) == ["o2"] and reason in dropped["o2"] and "masked_input" in dropped["o2"]
    assert spy.sums[-1]["summed"] == [n for n in NAMES if n != "o2"]
    spy.assert_exact()


def test_a_masked_input_replayed_from_an_earlier_round_is_refused(spy):
    kept = {}

    def replay(direction, message, fields, arrays):
        if direction == "up" and message == "train":
            if "first" in kept:
                return fields, {**arrays, "masked_input": kept["first"]}
            kept["first"] = arrays["masked_input"]
        return fields, arrays

    model = _fit(_with({"o2": replay}), rounds=2)
    log = model.privacy_report()["round_log"]
    assert log[0]["dropped"] == {} and "replayed" in log[1]["dropped"]["o2"]
    spy.assert_exact(0)
    spy.assert_exact(1)


def test_an_owner_cannot_send_another_owners_masked_input(spy):
    sent = {}

    def keep(direction, message, fields, arrays):
        if direction == "up" and message == "train":
            sent["o2"] = arrays["masked_input"]
        return fields, arrays

    def impersonate(direction, message, fields, arrays):
        if direction == "up" and message == "train":
            return fields, {**arrays, "masked_input": sent["o2"]}
        return fields, arrays

    model = _fit(_with({"o2": keep, "o3": impersonate}))
    dropped = model.privacy_report()["round_log"][0]["dropped"]
    assert list(dropped) == ["o3"] and "claims to be owner index 2" in dropped["o3"]
    spy.assert_exact()


@pytest.mark.parametrize("stage", ["share_keys", "unmask"])
def test_an_answer_from_an_earlier_stage_is_a_replay(spy, stage):
    kept = {}

    def stale(direction, message, fields, arrays):
        if direction == "up" and message == "advertise_keys":
            kept["keys"] = arrays["message"]
        if direction == "up" and message == stage:
            return fields, {"message": kept["keys"]}
        return fields, arrays

    model = _fit(_with({"o4": stale}))
    dropped = model.privacy_report()["round_log"][0]["dropped"]
    assert "AdvertiseKeys during stage" in dropped["o4"] and "a replay" in dropped["o4"]
    spy.assert_exact()
    summed = spy.sums[-1]["summed"]
    assert ("o4" in summed) == (stage == "unmask")  # its masked input arrived before unmasking


def test_shares_that_do_not_reconstruct_fail_the_round_naming_the_dealer(monkeypatch):
    """o2 deals shares of its seed on no polynomial through it (and commits to them): the
    round fails at unmasking naming o2; no aggregate is applied."""
    calls, real = [], owner_module.share_secret

    def corrupting(secret, points, threshold, stream):
        calls.append(secret)
        shares = real(secret, points, threshold, stream)
        if len(calls) == 5:  # owners share in turn, two secrets each: o2's seed is call 5
            first = min(shares)
            shares[first] = (shares[first] + 1) % owner_module.PRIME
        return shares

    monkeypatch.setattr(owner_module, "share_secret", corrupting)
    with pytest.raises(secagg.SecAggRoundError) as info:
        _fit(_with({}))
    assert info.value.stage == "unmasking" and info.value.owners == ("o2",)
    assert "do not reconstruct" in str(info.value)


# -- fuzz: every message type, both directions, as the engine carries them --------------------
_UP = ["advertise_keys", "share_keys", "train", "unmask"]
_DOWN = ["advertise_keys", "share_keys", "train", "unmask"]  # setup, neighbour keys, forwarded
_KEY = {"train": "masked_input"}


def _mutate(data: bytes, change: str, position: int, byte: int) -> bytes:
    if not data:
        return bytes([byte])
    position %= len(data)
    if change == "flip":
        return data[:position] + bytes([data[position] ^ (1 + byte % 255)]) + data[position + 1 :]
    if change == "truncate":
        return data[:position]
    if change == "extend":
        return data + bytes([byte])
    return bytes(b ^ (1 + (byte + i) % 255) for i, b in enumerate(data))  # garbage, same length


@pytest.fixture(scope="module")
def round_bench():
    """Six simulated owners configured once for a secure job; each example runs one round."""
    data = FederatedData.simulate(make_partitions(sizes=(12,) * 6), names=NAMES)
    model = make_model(pk.Federated(rounds=1000, secure_aggregation=True))
    engine, runner = model.engine, CohortRunner(30.0)
    owners = {client.name: client for client in data.clients()}
    descriptions = engine._describe_and_check(owners, runner, model)
    job = engine._job_spec(model, 16, False, None, "secagg", 1000)
    job = _secure_job(job, descriptions, len(owners), None, model.privacy)
    engine._configure(owners, runner, job)
    weights = WeightLayout(model.weights).flatten(model.get_weights())
    yield {"job": job, "owners": owners, "runner": runner, "weights": weights}
    runner.close()


_ROUNDS = itertools.count()


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    owner=st.sampled_from(NAMES),
    direction=st.sampled_from(["up", "down"]),
    message=st.sampled_from(_UP),
    change=st.sampled_from(["flip", "truncate", "extend", "garbage", "dtype", "drop", "junk"]),
    position=st.integers(0, 1 << 16),
    byte=st.integers(0, 255),
)
def test_a_round_with_one_mutated_message_is_correct_or_fails_cleanly(
    round_bench, spy, owner, direction, message, change, position, byte
):
    key = _KEY.get(message, "message")

    def rewrite(way, name, fields, arrays):
        if way != direction or name != message:
            return fields, arrays
        if way == "down" and name == "train":  # the forwarded shares travel as a bytes field
            fields = dict(fields)
            data = fields[secagg.aggregation.FORWARDED]
            if change in ("drop", "dtype", "junk"):
                fields[secagg.aggregation.FORWARDED] = {"drop": None, "dtype": 1.5}.get(change, "x")
            else:
                fields[secagg.aggregation.FORWARDED] = _mutate(data, change, position, byte)
            return fields, arrays
        arrays = dict(arrays)
        if change == "drop":
            arrays.pop(key, None)
        elif change == "dtype":
            arrays[key] = arrays[key].astype(np.float32)
        elif change == "junk":
            arrays["certificate/o0"] = np.frombuffer(b"not a certificate", np.uint8)
        else:
            data = _mutate(arrays[key].tobytes(), change, position, byte)
            arrays[key] = np.frombuffer(data, np.uint8)
        return fields, arrays

    bench = round_bench
    owners = {
        name: StageOwner(client, rewrite=rewrite if name == owner else None)
        for name, client in bench["owners"].items()
    }
    federated_round = FederatedRound(
        job=bench["job"],
        owners=owners,
        runner=bench["runner"],
        aggregator=SecAggPlusAggregator(),
        server_optimizer=server_optimizers.get("fedavg", None),
        fraction_fit=1.0,
        min_owners=2,
        client_dp=None,
        ledger=accounting.RoundLedger(1e-5),
    )
    try:
        outcome = federated_round.run(next(_ROUNDS), bench["weights"], list(NAMES))
    except PartyError:
        return  # the round failed, naming why: never a wrong aggregate
    spy.assert_exact()
    assert set(outcome.survivors) == set(spy.sums[-1]["summed"])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    method=st.sampled_from(["advertise_keys", "share_keys", "unmask", "nothing"]),
    fields=st.dictionaries(
        st.sampled_from(["job_id", "round", "certificate"]),
        st.one_of(st.integers(-2, 3), st.text(max_size=4), st.booleans(), st.none()),
    ),
    blob=st.binary(max_size=300),
    as_array=st.booleans(),
)
def test_an_owner_answers_any_aggregation_request_with_an_answer_or_a_typed_error(
    round_bench, method, fields, blob, as_array
):
    """The owner's boundary: whatever arrives, `handle` returns a well-formed message."""
    service = round_bench["owners"]["o1"].transport.service
    fields = {"job_id": round_bench["job"].job_id, **fields}
    arrays = {"message": np.frombuffer(blob, np.uint8)} if as_array else {}
    answer, _ = wire.decode(
        service.handle(f"aggregation/secagg/{method}", wire.encode(fields, arrays))
    )
    assert "error" in answer or "session" in answer or answer == {}
    if "error" in answer:
        assert answer["error"]["type"] in {
            "PartyError",
            "CapabilityError",
            "PrivacyPolicyError",
            "AuthenticationError",
            "UnknownJobError",
            "WireFormatError",
        }
    garbage = service.handle(f"aggregation/secagg/{method}", blob)
    assert "error" in wire.decode(garbage)[0]
