"""Batch samplers: Poisson inclusion statistics, one pass per epoch for shuffling."""

import numpy as np
import pytest

from privkeras.backends.dpsgd.sampling import TrainingArrays, make_sampler
from privkeras.errors import PrivacyPolicyError


def test_poisson_includes_each_example_independently_at_rate_q():
    n, batch, steps = 400, 20, 2000
    sampler = make_sampler("poisson", n, batch, None)
    assert sampler.steps_per_epoch == 20 and sampler.sample_rate == 0.05
    counts = np.zeros(n)
    sizes = []
    for step in range(steps):
        indices = sampler.batch(step)
        assert len(np.unique(indices)) == len(indices)
        counts[indices] += 1
        sizes.append(len(indices))
    # Batch size ~ Binomial(n, q): mean 20, variance 19; per-example inclusion ~ Binomial(2000, q).
    assert np.mean(sizes) == pytest.approx(20, abs=0.5)
    assert np.var(sizes) == pytest.approx(19, rel=0.15)
    assert counts.mean() == pytest.approx(100, rel=0.02)
    assert counts.std() == pytest.approx(np.sqrt(2000 * 0.05 * 0.95), rel=0.15)


def test_shuffle_uses_every_example_once_per_epoch():
    sampler = make_sampler("shuffle", 10, 4, None)
    assert sampler.steps_per_epoch == 3
    for _ in range(2):
        sampler.start_epoch()
        batches = [sampler.batch(i) for i in range(3)]
        assert [len(b) for b in batches] == [4, 4, 2]
        assert sorted(np.concatenate(batches)) == list(range(10))


def test_unknown_sampling_lists_the_known_ones():
    with pytest.raises(PrivacyPolicyError, match=r"\['poisson', 'shuffle'\]"):
        make_sampler("uniform", 10, 2, None)


def test_training_arrays_fold_class_weights_and_cast_to_floatx():
    x = np.zeros((4, 2), dtype="float64")
    arrays = TrainingArrays(
        x, np.array([0, 1, 1, 0]), sample_weight=np.array([1, 2, 3, 4]), class_weight={1: 10.0}
    )
    assert arrays.x.dtype == np.float32
    np.testing.assert_allclose(arrays.sample_weight, [1, 20, 30, 4])
    _, validation = arrays.split(0.25)
    assert len(arrays) == 3 and len(validation[0]) == 1
