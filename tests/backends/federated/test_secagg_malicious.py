"""Owners (and a coordinator) that misbehave: the round's result is correct or an error.

Malformed, wrong-length, duplicated, replayed and impersonating messages drop
their sender from the stage and name it; shares that do not match their
commitments are refused; shares that do not reconstruct fail the round naming
their dealer. A fuzz test mutates every message type, both directions.
"""

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privkeras.backends.federated.secagg import (
    STAGES,
    OwnerRequirements,
    SecAggConfig,
    SecAggMessageError,
    SecAggRoundError,
    decode_message,
    simulate_round,
)
from privkeras.backends.federated.secagg import owner as owner_module
from privkeras.backends.federated.secagg.messages import (
    MaskedInput,
    RoundSetup,
    UnmaskRequest,
    UnmaskResponse,
)
from privkeras.errors import PrivacyPolicyError

CONFIG = SecAggConfig(clip_range=1.0)
NAMES = [f"o{i}" for i in range(6)]


def _updates(d=40, seed=0):
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(-1, 1, d) for name in NAMES}


def _assert_exact(result, updates):
    expected = np.sum([updates[name] for name in result.survivors], axis=0)
    gamma = result.params.granularity
    np.testing.assert_allclose(result.total, expected, rtol=0, atol=len(updates) * gamma)


def _replace(stage_wanted, owner_wanted, rewrite):
    def tamper(stage, owner, data):
        if stage == stage_wanted and owner == owner_wanted:
            return rewrite(data)
        return data

    return tamper


def _masked(data, vector):
    message = MaskedInput.from_bytes(data)
    return MaskedInput(message.round_id, message.sender, vector).to_bytes()


@pytest.mark.parametrize(
    "rewrite, reason",
    [
        (lambda data: data[:-3], "malformed"),
        (lambda data: data + b"\0\0\0\0", "malformed"),
        (lambda data: _masked(data, np.zeros(39, np.uint32)), "wrong length"),
        (lambda data: _masked(data, np.zeros(40, np.uint64)), "wrong length"),
        (lambda data: [data, data], "duplicate"),
        (lambda data: b"not a message at all", "malformed"),
    ],
    ids=["truncated", "trailing", "short-vector", "uint64-vector", "duplicate", "garbage"],
)
def test_a_bad_masked_input_drops_its_sender_and_names_it(rewrite, reason):
    updates = _updates()
    report = simulate_round(updates, CONFIG, tamper_up=_replace("masked_input", "o2", rewrite))
    result = report.result
    assert "o2" not in result.survivors and "o2" in result.dropped["masked_input"]
    assert reason in result.misbehaving["o2"] and "masked_input" in result.misbehaving["o2"]
    _assert_exact(result, updates)  # o2's mask with its neighbours is recovered


@pytest.mark.parametrize("stage", ["advertise_keys", "share_keys", "unmasking"])
def test_duplicates_at_other_stages_drop_the_sender(stage):
    updates = _updates()
    report = simulate_round(updates, CONFIG, tamper_up=_replace(stage, "o4", lambda d: [d, d]))
    assert "duplicate" in report.result.misbehaving["o4"]
    assert "o4" in report.result.dropped[stage]
    _assert_exact(report.result, updates)


def test_a_message_replayed_from_another_round_is_refused():
    captured = {}

    def keep(stage, owner, data):
        captured[stage, owner] = data
        return data

    simulate_round(_updates(), CONFIG, tamper_up=keep)
    updates = _updates(seed=1)
    old = captured["masked_input", "o1"]
    report = simulate_round(
        updates, CONFIG, tamper_up=_replace("masked_input", "o1", lambda d: old)
    )
    assert "replayed" in report.result.misbehaving["o1"]
    assert "o1" not in report.result.survivors
    _assert_exact(report.result, updates)


def test_a_message_of_an_earlier_stage_in_the_same_round_is_refused():
    captured = {}

    def replay(stage, owner, data):
        captured[stage, owner] = data
        if stage == "unmasking" and owner == "o3":
            return [captured["masked_input", "o3"], data]
        return data

    updates = _updates()
    result = simulate_round(updates, CONFIG, tamper_up=replay).result
    assert "replay" in result.misbehaving["o3"] and "o3" in result.dropped["unmasking"]
    assert "o3" in result.survivors  # its masked input was accepted before
    _assert_exact(result, updates)


def test_an_owner_cannot_speak_for_another():
    captured = {}

    def impersonate(stage, owner, data):
        captured[stage, owner] = data
        if stage == "share_keys" and owner == "o5":
            return captured["share_keys", "o0"]  # o5 sends o0's message as its own
        return data

    updates = _updates()
    result = simulate_round(updates, CONFIG, tamper_up=impersonate).result
    assert "claims to be owner index 0" in result.misbehaving["o5"]
    assert "o5" not in result.survivors and "o0" in result.survivors
    _assert_exact(result, updates)


def test_a_revealed_share_that_does_not_match_its_commitment_is_refused():
    """o4 lies about a share it reveals: refused by the dealer's commitment, o4's whole
    response is dropped, the others' shares rebuild every seed."""

    def lie(data):
        message = UnmaskResponse.from_bytes(data)
        first = message.seed_shares[0]
        forged = dataclasses.replace(first, share=(first.share + 1) % owner_module.PRIME)
        return dataclasses.replace(
            message, seed_shares=(forged, *message.seed_shares[1:])
        ).to_bytes()

    updates = _updates()
    result = simulate_round(updates, CONFIG, tamper_up=_replace("unmasking", "o4", lie)).result
    assert "does not match the dealer's commitment" in result.misbehaving["o4"]
    assert "o4" in result.dropped["unmasking"] and "o4" in result.survivors
    _assert_exact(result, updates)


def test_shares_a_dealer_corrupted_fail_the_round_naming_the_dealer(monkeypatch):
    """o2 deals shares of its seed that lie on no polynomial through its seed (and
    commits to them): nothing can tell until reconstruction, which then fails the round
    with o2 named; no sum is returned."""
    calls = []
    real = owner_module.share_secret

    def corrupting(secret, points, threshold, stream):
        calls.append(secret)
        shares = real(secret, points, threshold, stream)
        if len(calls) == 5:  # o0, o1 make calls 1-4; o2's seed is call 5
            first = min(shares)
            shares[first] = (shares[first] + 1) % owner_module.PRIME
        return shares

    monkeypatch.setattr(owner_module, "share_secret", corrupting)
    with pytest.raises(SecAggRoundError) as info:
        simulate_round(_updates(), CONFIG)
    assert info.value.stage == "unmasking" and info.value.owners == ("o2",)
    assert "do not reconstruct" in str(info.value)


def test_a_share_that_does_not_decrypt_becomes_a_complaint():
    """The coordinator (or the channel) garbles a ciphertext it forwards to o0: o0 cannot
    decrypt o1's shares, says so, and the others' shares suffice."""

    def garble(stage, owner, data):
        if stage != "masked_input" or owner != "o0":
            return data
        message = decode_message(data)
        first = message.shares[0]
        bad = dataclasses.replace(first, ciphertext=bytes(len(first.ciphertext)))
        return dataclasses.replace(message, shares=(bad, *message.shares[1:])).to_bytes()

    updates = _updates()
    result = simulate_round(updates, CONFIG, tamper_down=garble).result
    assert result.complaints == {"o0": ("o1",)}
    _assert_exact(result, updates)


def test_owners_refuse_unmask_requests_that_do_not_split_their_neighbours():
    """An owner reveals one share per neighbour that shared keys with it, and only when
    the request accounts for every such neighbour exactly once."""

    def leave_one_out(stage, owner, data):
        if stage != "unmasking" or owner != "o0":
            return data
        message = UnmaskRequest.from_bytes(data)
        return dataclasses.replace(message, survivors=message.survivors[1:]).to_bytes()

    updates = _updates()
    report = simulate_round(
        updates, CONFIG, drop={"masked_input": ["o5"]}, tamper_down=leave_one_out
    )
    assert isinstance(report.owner_errors["o0"], SecAggMessageError)
    assert "split the neighbours" in str(report.owner_errors["o0"])
    assert "o0" in report.result.dropped["unmasking"]
    _assert_exact(report.result, updates)


def test_an_owner_answers_one_unmask_request_per_round():
    from privkeras.backends.federated.secagg import Ed25519Credentials, Ed25519Signer, SecAggOwner
    from privkeras.backends.federated.secagg.coordinator import SecAggCoordinator

    names = ["a", "b", "c"]
    signers = {n: Ed25519Signer() for n in names}
    credentials = Ed25519Credentials({n: s.public_key_bytes() for n, s in signers.items()})
    coordinator = SecAggCoordinator(CONFIG, names, 4)
    owners = {n: SecAggOwner(n, signers[n], credentials) for n in names}
    for name, m in coordinator.setup_messages().items():
        coordinator.receive(name, owners[name].advertise_keys(m).to_bytes())
    for name, m in coordinator.close_advertise_keys().items():
        coordinator.receive(name, owners[name].share_keys(m).to_bytes())
    for name, m in coordinator.close_share_keys().items():
        coordinator.receive(name, owners[name].masked_input(m, np.zeros(4)).to_bytes())
    requests = coordinator.close_masked_input()
    owners["a"].unmask(requests["a"])
    with pytest.raises(SecAggMessageError, match="stage"):
        owners["a"].unmask(requests["a"])


def test_owners_refuse_parameters_that_do_not_follow_from_the_settings():
    def lower_threshold(stage, owner, data):
        if stage != "advertise_keys":
            return data
        setup = RoundSetup.from_bytes(data)
        params = dataclasses.replace(setup.params, threshold=1)
        return dataclasses.replace(setup, params=params).to_bytes()

    with pytest.raises(SecAggRoundError) as info:
        simulate_round(_updates(), CONFIG, tamper_down=lower_threshold)
    assert info.value.stage == "advertise_keys" and len(info.value.owners) == 6


def test_an_owner_refuses_noise_below_its_own_requirement():
    from privkeras.backends.federated.secagg import Ed25519Credentials, Ed25519Signer, SecAggOwner
    from privkeras.backends.federated.secagg.coordinator import SecAggCoordinator

    config = SecAggConfig(clip_norm=1.0, noise_multiplier=0.5)
    coordinator = SecAggCoordinator(config, ["a", "b", "c"], 10)
    signer = Ed25519Signer()
    owner = SecAggOwner(
        "a",
        signer,
        Ed25519Credentials({"a": signer.public_key_bytes()}),
        requirements=OwnerRequirements(min_noise_multiplier=1.0),
    )
    with pytest.raises(PrivacyPolicyError, match=r"noise_multiplier >= 1\.0"):
        owner.advertise_keys(coordinator.setup_messages()["a"].to_bytes())


def test_unknown_senders_and_late_messages_are_recorded_not_accepted():
    from privkeras.backends.federated.secagg.coordinator import SecAggCoordinator

    coordinator = SecAggCoordinator(CONFIG, NAMES, 4)
    assert coordinator.receive("mallory", b"anything") is False
    assert "not invited" in coordinator.misbehaving["mallory"]
    assert coordinator.waiting_for() == tuple(NAMES)


# ---- fuzzing ------------------------------------------------------------------------


def _all_messages():
    """Every message of a round with a dropout (so all fields are non-empty), by type."""
    found = {}

    def keep(stage, owner, data):
        found.setdefault(type(decode_message(data)).__name__, data)
        return data

    simulate_round(
        _updates(d=8),
        CONFIG,
        drop={"masked_input": ["o5"]},
        tamper_up=keep,
        tamper_down=keep,
        seed=3,
    )
    return found


MESSAGES = _all_messages()


def test_the_fuzz_corpus_has_every_message_type():
    assert sorted(MESSAGES) == sorted(
        [
            "RoundSetup",
            "AdvertiseKeys",
            "NeighbourKeys",
            "ShareKeys",
            "ForwardedShares",
            "MaskedInput",
            "UnmaskRequest",
            "UnmaskResponse",
        ]
    )
    for data in MESSAGES.values():
        assert decode_message(data).to_bytes() == data


mutation = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 10_000)),
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("random"), st.binary(max_size=300)),
)


def _mutate(data, change):
    if change[0] == "truncate":
        return data[: change[1] % len(data)]
    if change[0] == "flip":
        at = change[1] % len(data)
        return data[:at] + bytes([data[at] ^ change[2]]) + data[at + 1 :]
    if change[0] == "insert":
        at = change[1] % (len(data) + 1)
        return data[:at] + change[2] + data[at:]
    return change[1]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(MESSAGES)), change=mutation)
def test_decoding_a_mutated_message_gives_a_message_or_a_typed_error(kind, change):
    data = _mutate(MESSAGES[kind], change)
    try:
        message = decode_message(data)
    except SecAggMessageError:
        return
    assert message.to_bytes() == data  # what decodes re-encodes to the same bytes


BASELINE_SEED = 21
BASELINE_UPDATES = _updates(d=16, seed=5)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stage=st.sampled_from(STAGES),
    owner=st.sampled_from(NAMES),
    upward=st.booleans(),
    change=mutation,
)
def test_a_round_with_one_mutated_message_is_correct_or_fails_cleanly(stage, owner, upward, change):
    """One message, either direction, mutated: the round never raises anything but a
    SecAggRoundError, and when it returns, the sum is the survivors' updates -- or, when
    the mutation left a well-formed masked vector, exactly that vector's change."""
    changed = {}

    def tamper(at_stage, at_owner, data):
        if (at_stage, at_owner) != (stage, owner):
            return data
        mutated = _mutate(data, change)
        changed["before"], changed["after"] = data, mutated
        return mutated

    kwargs = {"tamper_up" if upward else "tamper_down": tamper}
    try:
        result = simulate_round(BASELINE_UPDATES, CONFIG, seed=BASELINE_SEED, **kwargs).result
    except SecAggRoundError:
        return
    accepted_vector = None
    if upward and stage == "masked_input" and owner in result.survivors:
        try:
            accepted_vector = MaskedInput.from_bytes(changed["after"]).vector
        except SecAggMessageError:
            accepted_vector = None
    if accepted_vector is None:
        _assert_exact(result, BASELINE_UPDATES)
    else:  # a well-formed vector the owner could have sent: the sum moves by the change
        before = MaskedInput.from_bytes(changed["before"]).vector
        baseline = simulate_round(BASELINE_UPDATES, CONFIG, seed=BASELINE_SEED).result
        np.testing.assert_array_equal(
            result.ring_total - baseline.ring_total, accepted_vector - before
        )
