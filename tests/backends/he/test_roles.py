"""Client and server roles: who holds which key, bytes round trips, and mix-ups."""

import keras
import numpy as np
import pytest
import tenseal
import tenseal.sealapi as sealapi

from privkeras.backends.he import (
    ContextMismatchError,
    EncryptedBatch,
    HEClient,
    HEInputError,
    HEServer,
    PackingSpec,
    PublicContext,
    SecretKeyError,
)
from privkeras.backends.he.wire import seal_to_bytes
from privkeras.layers import PolynomialActivation


@pytest.fixture(scope="module")
def setup(small_model):
    model, x = small_model
    server = HEServer(model)
    spec = server.packing(n_samples=len(x))
    client = HEClient(spec.parameters)
    public = client.public_context(spec)
    expected = keras.ops.convert_to_numpy(model(x.astype(np.float32)))
    return server, spec, client, public, x, expected


def _secret_keys(obj, seen=None):
    """Every SEAL SecretKey reachable from an object's attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, sealapi.SecretKey):
        return [obj]
    children = []
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    elif hasattr(obj, "__dict__"):
        children = list(vars(obj).values())
    return [key for child in children for key in _secret_keys(child, seen)]


def test_round_trip_is_correct(setup):
    server, spec, client, public, x, expected = setup
    assert spec.parameters.poly_modulus_degree == 8192 and server.depth == 2
    outputs = server.evaluate(client.encrypt(x, spec), public)
    np.testing.assert_allclose(client.decrypt(outputs, spec), expected, atol=1e-3)


def test_the_server_holds_no_secret_key(setup):
    server, spec, client, public, x, _ = setup
    outputs = server.evaluate(client.encrypt(x, spec), public)
    assert _secret_keys(client)  # the walk finds keys where they are
    assert not _secret_keys(server) and not _secret_keys(public)
    assert not server.has_secret_key and not public.is_private()
    with pytest.raises(SecretKeyError, match="cannot decrypt"):
        server.decrypt(outputs)
    with pytest.raises(SecretKeyError):
        public.secret_key()
    with pytest.raises(SecretKeyError, match="never hold it"):
        server.evaluate(client.encrypt(x, spec), client)
    secret = seal_to_bytes(client._secret_key)
    assert secret[64:1088] not in public.to_bytes()


def test_tenseal_contexts_interoperate_and_a_private_one_is_refused(setup):
    server, spec, _, _, x, expected = setup
    bits = list(spec.parameters.coeff_mod_bit_sizes)
    context = tenseal.context(tenseal.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=bits)
    context.generate_galois_keys()  # TenSEAL's power-of-two keys: SEAL composes any step
    with pytest.raises(SecretKeyError, match="holds the secret key"):
        PublicContext.from_tenseal(context, spec.parameters)
    client = HEClient.from_tenseal(context, spec.parameters)
    server_side = context.copy()
    server_side.make_context_public()
    assert context.is_private() and not server_side.is_private()
    public = PublicContext.from_tenseal(server_side, spec.parameters)
    assert public.fingerprint == client.fingerprint and public.covers({1, 3, 96})
    outputs = server.evaluate(client.encrypt(x, spec), public)
    np.testing.assert_allclose(client.decrypt(outputs, spec), expected, atol=1e-3)


def test_everything_crosses_as_bytes(setup):
    server, spec, client, public, x, expected = setup
    spec_remote = PackingSpec.from_bytes(spec.to_bytes())
    public_remote = PublicContext.from_bytes(public.to_bytes())
    assert public_remote.fingerprint == public.fingerprint
    inputs = EncryptedBatch.from_bytes(client.encrypt_to_bytes(x, spec_remote), public_remote)
    outputs_bytes = server.evaluate(inputs, public_remote).to_bytes()
    restored = HEClient.from_bytes(client.to_bytes(include_secret_key=True))
    outputs = EncryptedBatch.from_bytes(outputs_bytes, restored)
    np.testing.assert_allclose(restored.decrypt(outputs, spec_remote), expected, atol=1e-3)
    # seeded symmetric ciphertexts travel at about half the size
    full = len(client.encrypt(x, spec).to_bytes())
    assert len(client.encrypt_to_bytes(x, spec)) < 0.6 * full
    with pytest.raises(ValueError, match="include_secret_key=True"):
        client.to_bytes()


def test_mixed_up_contexts_and_specs_are_typed_errors(setup):
    server, spec, client, public, x, _ = setup
    other = HEClient(spec.parameters)
    mine = client.encrypt(x, spec)
    with pytest.raises(ContextMismatchError, match="another key pair"):
        server.evaluate(mine, other.public_context(spec))
    with pytest.raises(ContextMismatchError, match="another key pair"):
        EncryptedBatch.from_bytes(mine.to_bytes(), other)
    outputs = server.evaluate(mine, public)
    with pytest.raises(ContextMismatchError, match="this client's keys"):
        other.decrypt(outputs, spec)
    with pytest.raises(ContextMismatchError, match="Galois keys"):
        server.evaluate(mine, client.public_context())  # no rotation keys
    with pytest.raises(ContextMismatchError, match="fresh ciphertexts"):
        server.evaluate(
            EncryptedBatch(outputs.ciphertexts, len(x), "inputs", mine.spec_id, mine.context_id),
            public,
        )
    other_model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(3), PolynomialActivation("square")]
    )
    foreign = HEServer(other_model).packing(n_samples=len(x))
    assert foreign.parameters == spec.parameters
    with pytest.raises(ContextMismatchError, match="a spec from this server"):
        server.evaluate(client.encrypt(x, foreign), client.public_context(foreign))
    with pytest.raises(ContextMismatchError, match="packed by spec"):
        client.decrypt(outputs, foreign)
    with pytest.raises(HEInputError, match="a forged length"):
        EncryptedBatch.from_bytes(b"PKHE\xff\xff\xff\xff garbage", public)
    with pytest.raises(HEInputError, match="JSON object"):  # valid JSON, not an object
        EncryptedBatch.from_bytes(b"PKHE\x02\x00\x00\x00[]", public)
    with pytest.raises(HEInputError, match="SEAL rejects"):
        data = bytearray(mine.to_bytes())
        data[-200:] = bytes(200)
        EncryptedBatch.from_bytes(bytes(data), public)


def test_client_input_errors(setup):
    _, spec, client, _, x, _ = setup
    with pytest.raises(HEInputError, match=r"shape \(n, 6\)"):
        client.encrypt(x[:, :5], spec)
    with pytest.raises(HEInputError, match=f"1 to {spec.block} samples"):
        client.encrypt(np.zeros((spec.block + 1, 6)), spec)
    with pytest.raises(HEInputError, match="rows \\[0\\]"):
        client.encrypt(np.full((1, 6), np.nan), spec)
