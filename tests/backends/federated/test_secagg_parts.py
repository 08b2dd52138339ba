"""The parts of secure aggregation: Shamir sharing, the neighbour graph, the codec,
settings, key derivation and signatures, the wire format."""

import itertools

import numpy as np
import pytest
import sympy
from scipy import stats

from privkeras.backends.federated.secagg import (
    Ed25519Credentials,
    Ed25519Signer,
    RingCodec,
    SecAggConfig,
    SecAggMessageError,
)
from privkeras.backends.federated.secagg.crypto import derive_key, expand_mask
from privkeras.backends.federated.secagg.graph import (
    choose_degree_and_threshold,
    harary_graph,
    is_connected,
    random_permutation,
)
from privkeras.backends.federated.secagg.shamir import PRIME, reconstruct_secret, share_secret
from privkeras.backends.federated.secagg.wire import Reader, Writer
from privkeras.core.random import SecureStream
from privkeras.errors import AuthenticationError, PrecisionOverflowError, PrivacyPolicyError

# ---- Shamir ----------------------------------------------------------------------


def test_the_field_is_the_smallest_prime_above_2_256():
    assert sympy.isprime(PRIME) and sympy.nextprime(2**256) == PRIME


def test_any_threshold_shares_reconstruct_the_secret():
    secret = int.from_bytes(SecureStream(seed=1).random_bytes(32), "little")
    points = [3, 7, 8, 20, 21]
    shares = share_secret(secret, points, 3, SecureStream(seed=2))
    for subset in itertools.combinations(points, 3):
        assert reconstruct_secret({p: shares[p] for p in subset}) == secret
    for subset in itertools.combinations(points, 2):  # too few: another value
        assert reconstruct_secret({p: shares[p] for p in subset}) != secret


def test_fewer_than_threshold_shares_are_uniform_whatever_the_secret():
    """With threshold 3, two shares are uniform in the field: same distribution for
    secret 0 and secret p - 1 (top byte of share values, chi-square and KS)."""
    stream = SecureStream(seed=3)
    tops = {}
    for secret in (0, PRIME - 1):
        values = [share_secret(secret, [1, 2, 3], 3, stream)[1] for _ in range(4000)]
        tops[secret] = np.array([v >> 248 for v in values])
        assert stats.chisquare(np.bincount(tops[secret], minlength=256)[:256]).pvalue > 1e-4
    assert stats.ks_2samp(tops[0], tops[PRIME - 1]).pvalue > 1e-4


def test_shamir_refuses_bad_arguments():
    stream = SecureStream(seed=4)
    with pytest.raises(ValueError, match="threshold"):
        share_secret(5, [1, 2], 3, stream)
    with pytest.raises(ValueError, match="distinct non-zero"):
        share_secret(5, [1, 1], 1, stream)
    with pytest.raises(ValueError, match="secret"):
        share_secret(PRIME, [1], 1, stream)
    with pytest.raises(ValueError, match="non-zero"):
        reconstruct_secret({0: 1})


# ---- the neighbour graph ---------------------------------------------------------


def test_harary_graph_is_k_regular_and_symmetric_with_random_labels():
    members = list(range(50))
    graph = harary_graph(members, 10, SecureStream(seed=5))
    assert all(len(graph[m]) == 10 and m not in graph[m] for m in members)
    assert all(m in graph[v] for m in members for v in graph[m])
    assert is_connected(members, graph)
    other = harary_graph(members, 10, SecureStream(seed=6))
    assert graph != other  # the labelling comes from the stream
    assert harary_graph([1, 2, 3], 5, SecureStream())[1] == {2, 3}  # complete
    with pytest.raises(ValueError, match="even degree"):
        harary_graph(members, 7, SecureStream())


def test_random_permutation_is_uniform():
    stream = SecureStream(seed=7)
    counts = {}
    for _ in range(6000):
        order = tuple(random_permutation([0, 1, 2], stream))
        counts[order] = counts.get(order, 0) + 1
    assert len(counts) == 6 and stats.chisquare(list(counts.values())).pvalue > 1e-4


def test_disconnected_survivors_are_detected():
    graph = harary_graph(list(range(10)), 2, SecureStream(seed=8))  # a cycle
    ring = [0]
    while len(ring) < 10:
        ring.append(next(v for v in graph[ring[-1]] if v not in ring[-2:]))
    assert not is_connected([ring[0], ring[1], ring[5], ring[6]], graph)


def test_degree_and_threshold_grow_logarithmically():
    """The defaults (1/3 dropouts, 10% colluders, 2^-40): the complete graph while it
    is cheaper, then a degree that grows by a few neighbours per factor of 10."""
    table = {n: choose_degree_and_threshold(n) for n in (2, 4, 10, 50, 100, 1000, 10_000)}
    assert table[2] == (1, 1) and table[4] == (3, 2) and table[10] == (9, 6)
    assert table[50][0] == 49
    assert table[100] == (78, 45) and table[1000] == (98, 38) and table[10_000] == (122, 47)
    with pytest.raises(ValueError, match="max_dropout"):
        choose_degree_and_threshold(10, max_dropout=0.6, max_corrupt=0.5)


# ---- settings ---------------------------------------------------------------------


def test_settings_refuse_bad_values_saying_what_was_received():
    with pytest.raises(PrivacyPolicyError, match="clip_range or clip_norm"):
        SecAggConfig()
    with pytest.raises(
        PrivacyPolicyError, match=r"ring_bits in \[32, 64\]. Received: ring_bits=16"
    ):
        SecAggConfig(clip_range=1.0, ring_bits=16)
    with pytest.raises(PrivacyPolicyError, match="max_dropout"):
        SecAggConfig(clip_range=1.0, max_dropout=1.0)
    with pytest.raises(PrivacyPolicyError, match="neighbours"):
        SecAggConfig(clip_range=1.0, neighbours=3).resolve(20, 10)
    with pytest.raises(PrivacyPolicyError, match="min_survivors"):
        SecAggConfig(clip_range=1.0, min_survivors=1).resolve(10, 10)
    with pytest.raises(PrivacyPolicyError, match="num_owners"):
        SecAggConfig(clip_range=1.0).resolve(1, 10)


def test_explicit_graph_settings_are_used():
    params = SecAggConfig(clip_range=1.0, neighbours=4, threshold=2, min_survivors=5).resolve(
        20, 10
    )
    assert (params.neighbours, params.threshold, params.min_survivors) == (4, 2, 5)


def test_parameters_round_trip_and_tampering_is_detected():
    params = SecAggConfig(clip_norm=1.0, noise_multiplier=1.0).resolve(10, 100)
    writer = Writer()
    params.write(writer)
    reader = Reader(writer.getvalue(), "parameters")
    again = type(params).read(reader)
    reader.done()
    assert again == params
    again.check_derivation()
    import dataclasses

    with pytest.raises(SecAggMessageError, match="granularity"):
        dataclasses.replace(params, granularity=params.granularity * 2).check_derivation()


# ---- the codec --------------------------------------------------------------------


def test_stochastic_rounding_is_unbiased():
    codec = RingCodec(32, 1.0, 10.0)
    stream = SecureStream(seed=9)
    values = np.full(100_000, 0.3)
    rounded = codec.signed(codec.encode(values, stream))
    assert set(np.unique(rounded)) == {0, 1}
    assert rounded.mean() == pytest.approx(0.3, abs=5 * np.sqrt(0.21 / 100_000))


def test_codec_clips_and_decodes_negative_sums():
    codec = RingCodec(32, 2.0**-20, 1.0)
    stream = SecureStream(seed=10)
    ring = codec.encode(np.array([-0.75, 5.0, -5.0]), stream)
    total = ring + codec.encode(np.array([-0.5, 0.0, 0.0]), stream)
    np.testing.assert_allclose(codec.decode(total), [-1.25, 1.0, -1.0], atol=2 * 2.0**-20)
    with pytest.raises(PrecisionOverflowError, match="finite"):
        codec.encode(np.array([np.nan]), stream)


# ---- crypto -----------------------------------------------------------------------


def test_masks_are_expanded_deterministically_from_the_seed():
    seed = bytes(range(32))
    first = expand_mask(seed, 1000, 32)
    assert first.dtype == np.uint32
    np.testing.assert_array_equal(first, expand_mask(seed, 1000, 32))
    assert not np.array_equal(first, expand_mask(bytes(32), 1000, 32))
    assert expand_mask(seed, 10, 64).dtype == np.uint64


def test_derived_keys_depend_on_every_input():
    shared, round_id = bytes(32), bytes(16)
    base = derive_key(shared, round_id, b"channel", 1, 2)
    assert base != derive_key(shared, round_id, b"channel", 2, 1)
    assert base != derive_key(shared, b"\1" * 16, b"channel", 1, 2)
    assert base != derive_key(shared, round_id, b"pairwise-mask", 1, 2)


def test_credentials_refuse_wrong_keys():
    alice, bob = Ed25519Signer(), Ed25519Signer()
    credentials = Ed25519Credentials({"alice": alice.public_key_bytes()})
    with pytest.raises(AuthenticationError, match="alice"):
        credentials.verify("alice", b"data", bob.sign(b"data"))
    with pytest.raises(ValueError, match="32-byte"):
        Ed25519Credentials({"alice": b"short"})


# ---- the wire ---------------------------------------------------------------------


def test_the_reader_refuses_short_long_and_unsorted_input():
    data = Writer().u32(3).raw(b"abc").indices((1, 5)).getvalue()
    reader = Reader(data, "test")
    assert reader.u32() == 3 and reader.raw(3) == b"abc"
    assert reader.indices("owners", 10) == (1, 5)
    reader.done()
    with pytest.raises(SecAggMessageError, match="more bytes"):
        Reader(b"\1", "test").u32()
    with pytest.raises(SecAggMessageError, match="trailing"):
        Reader(b"\1\2", "test").done()
    with pytest.raises(SecAggMessageError, match="increasing order"):
        Reader(Writer().indices((5, 1)).getvalue(), "test").indices("owners", 10)
    with pytest.raises(SecAggMessageError, match="bytes"):
        Reader("text", "test")
