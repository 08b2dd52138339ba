"""The federated engine through `PrivateSequential`: Keras's contract and bad input."""

import math

import keras
import numpy as np
import pytest

import privkeras as pk
from privkeras.backends import registry
from privkeras.backends.federated import FederatedData, FederatedEngine
from privkeras.backends.federated.errors import OwnerDataError
from privkeras.errors import CapabilityError, PrivacyPolicyError

from .conftest import FEATURES, flat, keras_twin, make_model


def test_the_registry_routes_the_federated_policy_here():
    assert isinstance(registry.get_engine(pk.Federated(), keras.backend.backend()), FederatedEngine)
    assert pk.FederatedData is FederatedData
    assert pk.DataOwner.__name__ == "DataOwner"


@pytest.mark.multi_backend
def test_fit_returns_a_history_of_rounds_with_weighted_metrics_owners_and_epsilon(partitions):
    model = make_model(pk.Federated(rounds=3, min_owners=3, clip_norm=1.0, noise_multiplier=1.0))
    history = model.fit(FederatedData.simulate(partitions), batch_size=16, verbose=0)
    assert isinstance(history, keras.callbacks.History)
    assert history.epoch == [0, 1, 2]
    logs = history.history
    assert {"loss", "accuracy", "owners", "epsilon"} <= set(logs)
    assert logs["owners"] == [3.0, 3.0, 3.0]
    assert logs["epsilon"] == sorted(logs["epsilon"]) and math.isfinite(logs["epsilon"][-1])
    assert model.privacy_report()["epsilon"] == logs["epsilon"][-1]


def test_round_metrics_are_the_owners_metrics_weighted_by_their_counts(partitions):
    model = make_model(pk.Federated(rounds=1, min_owners=3))
    start = model.get_weights()
    per_owner = []
    for x, y in partitions:
        twin = keras_twin(model)
        twin.set_weights(start)
        logs = twin.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0).history
        per_owner.append((len(x), logs["loss"][-1], logs["accuracy"][-1]))
    history = model.fit(
        FederatedData.simulate(partitions), batch_size=64, shuffle=False, verbose=0
    ).history
    total = sum(n for n, _, _ in per_owner)
    assert history["loss"][0] == pytest.approx(sum(n * loss for n, loss, _ in per_owner) / total)
    assert history["accuracy"][0] == pytest.approx(sum(n * a for n, _, a in per_owner) / total)


def test_evaluate_is_the_count_weighted_average_of_each_owners_evaluation(partitions):
    model = make_model(pk.Federated(rounds=1, min_owners=3))
    data = FederatedData.simulate(partitions)
    model.fit(data, verbose=0)
    twin = keras_twin(model)
    results = [(len(x), twin.evaluate(x, y, verbose=0, return_dict=True)) for x, y in partitions]
    total = sum(n for n, _ in results)
    got = model.evaluate(data, return_dict=True, verbose=0)
    assert list(got) == ["loss", "accuracy"]
    for name in got:
        assert got[name] == pytest.approx(sum(n * r[name] for n, r in results) / total, rel=1e-5)
    assert model.evaluate(data, verbose=0) == pytest.approx([got["loss"], got["accuracy"]])


def test_evaluate_on_owners_that_never_trained_configures_an_evaluation_job(partitions):
    model = make_model(pk.Federated(rounds=1, min_owners=1))
    logs = model.evaluate(FederatedData.simulate(partitions[:1]), return_dict=True, verbose=0)
    twin = keras_twin(model)
    x, y = partitions[0]
    assert logs["loss"] == pytest.approx(twin.evaluate(x, y, verbose=0)[0], rel=1e-5)


def test_predict_and_array_evaluate_are_keras_on_the_global_model(partitions):
    model = make_model(pk.Federated(rounds=1, min_owners=3))
    model.fit(FederatedData.simulate(partitions), verbose=0)
    x, y = partitions[0]
    twin = keras_twin(model)
    np.testing.assert_allclose(model.predict(x, verbose=0), twin.predict(x, verbose=0), atol=1e-6)
    assert model.evaluate(x, y, verbose=0)[0] == pytest.approx(twin.evaluate(x, y, verbose=0)[0])


def test_callbacks_run_per_round_early_stopping_and_checkpoint(partitions, tmp_path):
    model = make_model(pk.Federated(rounds=6, min_owners=3), optimizer=keras.optimizers.SGD(0.0))
    seen = []

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, dict(logs)))

    path = tmp_path / "round.weights.h5"
    history = model.fit(
        FederatedData.simulate(partitions),
        verbose=0,
        callbacks=[
            Recorder(),
            keras.callbacks.EarlyStopping(monitor="loss", patience=1, min_delta=1e-3),
            keras.callbacks.ModelCheckpoint(str(path), save_weights_only=True),
        ],
    )
    assert len(history.epoch) == 2  # lr 0: the loss never improves, patience 1
    assert [epoch for epoch, _ in seen] == [0, 1]
    assert "owners" in seen[0][1] and "loss" in seen[0][1]
    restored = make_model(None)
    restored.load_weights(str(path))
    np.testing.assert_array_equal(flat(restored.get_weights()), flat(model.get_weights()))


def test_progress_bar_shows_rounds_owners_and_epsilon(partitions, capsys):
    model = make_model(pk.Federated(rounds=2, min_owners=3, clip_norm=1.0, noise_multiplier=1.0))
    model.fit(FederatedData.simulate(partitions), verbose=2)
    out = capsys.readouterr().out
    assert "Round 1/2" in out and "Round 2/2" in out
    assert "3/3" in out and "owner" in out
    assert "epsilon:" in out and "owners: 3" in out


def test_validation_data_from_owners_or_the_coordinator(partitions):
    model = make_model(pk.Federated(rounds=2, min_owners=2))
    x_val, y_val = partitions[2]
    history = model.fit(
        FederatedData.simulate(partitions[:2]),
        validation_data=FederatedData.simulate([partitions[2]], names=["val"]),
        verbose=0,
    ).history
    assert len(history["val_loss"]) == 2
    twin = keras_twin(model)
    assert history["val_loss"][-1] == pytest.approx(twin.evaluate(x_val, y_val, verbose=0)[0])
    history = model.fit(
        FederatedData.simulate(partitions[:2]), validation_data=(x_val, y_val), verbose=0
    ).history
    assert history["val_loss"][-1] == pytest.approx(
        keras_twin(model).evaluate(x_val, y_val, verbose=0)[0]
    )


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda m, d: m.fit(np.zeros((4, FEATURES)), np.zeros(4)),
            PrivacyPolicyError,
            "FederatedData",
        ),
        (lambda m, d: m.fit(d, np.zeros(4)), PrivacyPolicyError, "y=None"),
        (lambda m, d: m.fit(d, epochs=5), PrivacyPolicyError, "rounds"),
        (lambda m, d: m.fit(d, sample_weight=np.ones(3)), CapabilityError, "sample_weight"),
        (lambda m, d: m.fit(d, batch_size=0), ValueError, "batch_size"),
        (lambda m, d: m.fit(d, nonsense=1), TypeError, "nonsense"),
    ],
)
def test_bad_fit_arguments_are_refused(partitions, call, error, match):
    model = make_model(pk.Federated(rounds=2, min_owners=1))
    with pytest.raises(error, match=match):
        call(model, FederatedData.simulate(partitions))


def test_more_min_owners_than_owners_is_refused_before_anything(partitions):
    model = make_model(pk.Federated(rounds=1, min_owners=5))
    with pytest.raises(PrivacyPolicyError, match=r"min_owners=5.*3 owners"):
        model.fit(FederatedData.simulate(partitions), verbose=0)


def test_duplicate_owner_names_are_refused(partitions):
    with pytest.raises(PrivacyPolicyError, match="duplicates"):
        FederatedData.simulate(partitions[:2], names=["a", "a"])


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda x, y: (x[:, :-1], y), r"features of shape \(8,\).*feature_shape=\(7,\)"),
        (lambda x, y: (x, y + 5), r"labels in \[0, 2\]"),
        (lambda x, y: (x, y + 0.5), "not whole numbers"),
        (lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x), y), "NaN"),
    ],
)
def test_an_owner_whose_data_does_not_fit_is_named_before_round_1(partitions, corrupt, match):
    parts = list(partitions)
    parts[1] = corrupt(*parts[1])
    model = make_model(pk.Federated(rounds=1, min_owners=1))
    before = flat(model.get_weights())
    with pytest.raises(OwnerDataError, match=match) as info:
        model.fit(FederatedData.simulate(parts, names=["alice", "bob", "carol"]), verbose=0)
    assert "'bob'" in str(info.value)
    assert "'alice'" not in str(info.value) and "'carol'" not in str(info.value)
    np.testing.assert_array_equal(flat(model.get_weights()), before)


def test_secure_aggregation_needs_its_aggregation_installed(partitions, monkeypatch):
    from privkeras.backends.federated import aggregation

    monkeypatch.setattr(aggregation, "AGGREGATORS", aggregation.Registry("aggregation"))
    aggregation.AGGREGATORS.register("plain", aggregation.PlainAggregator)
    model = make_model(pk.Federated(rounds=1, min_owners=1, secure_aggregation=True))
    with pytest.raises(CapabilityError, match="secagg"):
        model.fit(FederatedData.simulate(partitions), verbose=0)


def test_data_owner_needs_an_address():
    with pytest.raises(PrivacyPolicyError, match="host:port"):
        pk.DataOwner("alice")
    owner = pk.DataOwner("127.0.0.1:7001", name="alice", token="t")
    assert owner.name == "alice" and owner.credentials == {"token": "t"}


def test_target_epsilon_calibrates_the_noise_before_round_1(partitions):
    from privkeras.backends.federated import accounting

    policy = pk.Federated(rounds=4, min_owners=3, clip_norm=1.0, target_epsilon=8.0, delta=1e-3)
    model = make_model(policy)
    history = model.fit(FederatedData.simulate(partitions), verbose=0).history
    sigma = model.privacy_report()["noise_multiplier"]
    assert history["epsilon"][-1] <= 8.0
    assert history["epsilon"][-1] == pytest.approx(accounting.epsilon(1.0, sigma, 4, 1e-3))
    assert accounting.epsilon(1.0, sigma * 0.99, 4, 1e-3) > 8.0
