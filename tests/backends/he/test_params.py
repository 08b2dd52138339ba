"""Parameter selection against the HE security standard as SEAL enforces it."""

import pytest
import tenseal.sealapi as sealapi

from privkeras.backends.he.ckks import chain_primes
from privkeras.backends.he.errors import DepthExceededError
from privkeras.backends.he.params import (
    MAX_MODULUS_BITS,
    CKKSParameters,
    max_depth,
    min_scale_bits,
    select_parameters,
)
from privkeras.errors import PrivacyPolicyError

_SEAL_LEVELS = {128: "TC128", 192: "TC192", 256: "TC256"}


@pytest.mark.parametrize("security", sorted(MAX_MODULUS_BITS))
def test_the_table_is_the_one_seal_enforces(security):
    level = getattr(sealapi.SEC_LEVEL_TYPE, _SEAL_LEVELS[security])
    for degree, bits in MAX_MODULUS_BITS[security].items():
        assert sealapi.CoeffModulus.MaxBitCount(degree, level) == bits


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 8, 12, 20])
def test_chosen_chain_fits_the_depth_within_security(depth):
    params = select_parameters(depth)
    bits = params.coeff_mod_bit_sizes
    assert params.depth == depth
    assert sum(bits) <= MAX_MODULUS_BITS[128][params.poly_modulus_degree]
    assert max(bits) <= 60 and params.scale_bits >= min_scale_bits(params.poly_modulus_degree)
    assert bits[1:-1] == (params.scale_bits,) * depth
    # the smallest ring that fits: half of it would not
    smaller = params.poly_modulus_degree // 2
    if smaller in MAX_MODULUS_BITS[128]:
        assert max_depth(smaller) < depth
    # SEAL finds primes for it
    assert len(chain_primes(params.poly_modulus_degree, bits)) == depth + 1


def test_mlp_depth_gets_n8192_with_a_wide_scale():
    params = select_parameters(3)
    assert (params.poly_modulus_degree, params.coeff_mod_bit_sizes) == (8192, (49, 39, 39, 39, 49))


def test_higher_security_needs_a_bigger_ring():
    assert select_parameters(3, security_level=256).poly_modulus_degree > 8192


def test_fixed_fields_are_honoured():
    params = select_parameters(2, poly_modulus_degree=16384, scale_bits=30)
    assert params.poly_modulus_degree == 16384 and params.scale_bits == 30


def test_too_deep_is_refused_with_needed_and_available_depth():
    with pytest.raises(
        DepthExceededError, match=r"needs multiplicative depth 50.*N=32768.*offers depth 24"
    ):
        select_parameters(50)
    with pytest.raises(DepthExceededError, match=r"depth 3.*N=4096.*offers depth 1"):
        select_parameters(3, poly_modulus_degree=4096)
    assert issubclass(DepthExceededError, PrivacyPolicyError)


def test_a_chain_beyond_the_table_is_rejected():
    with pytest.raises(PrivacyPolicyError, match="at most 109 bits"):
        CKKSParameters(4096, (40, 40, 40), 40)
    params = CKKSParameters(4096, (30, 24, 30), 24)
    assert CKKSParameters.from_config(params.get_config()) == params
