"""Demo stage: DP-SGD on breast cancer, printing test accuracy and the epsilon spent."""

from __future__ import annotations

import time

import keras

from privkeras import datasets
from privkeras.cli.stages.plaintext import breast_cancer_model
from privkeras.policies import DPSGD

#: The demo's policy: Poisson batches of 32 of 427 examples, noise 2.
POLICY = DPSGD(l2_norm_clip=1.0, noise_multiplier=2.0, delta=1e-5)


def run(verbose: bool = False) -> dict:
    keras.utils.set_random_seed(0)
    data = datasets.breast_cancer()
    model = breast_cancer_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        privacy=POLICY,
    )
    start = time.perf_counter()
    model.fit(data.x_train, data.y_train, epochs=8, batch_size=32, verbose=int(verbose))
    _, accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    seconds = time.perf_counter() - start
    report = model.privacy_report()
    print(
        f"[dp-sgd] breast cancer: test accuracy {accuracy:.3f}, epsilon {report['epsilon']:.2f} "
        f"at delta {report['delta']:g} ({report['steps']} steps, sample rate "
        f"{report['sample_rate']:.3f}, noise {report['noise_multiplier']:g}, "
        f"{report['accountant'].upper()} accountant; {seconds:.1f} s)"
    )
    return {"accuracy": float(accuracy), "epsilon": report["epsilon"], "seconds": seconds}
