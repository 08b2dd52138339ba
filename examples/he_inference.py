"""Encrypted inference with homomorphic encryption (CKKS): the server never sees the inputs.

A small CNN is trained in plaintext on scikit-learn's digits (it ships with
scikit-learn: nothing is downloaded), with a `PolynomialActivation` where a
relu would be, so that CKKS can evaluate it. Then:

1. `compile(privacy="he")` and `predict`: one line, both roles in this process.
2. The same with the roles spelled out, as on two machines: only bytes cross
   between the client (who holds the secret key) and the server (who holds
   the model and a public context). The server evaluates independent groups
   of ciphertexts on every core (`EvaluationPool`).

    python examples/he_inference.py
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np

import privkeras as pk
from privkeras import datasets
from privkeras.backends.he import (
    EncryptedBatch,
    EvaluationPool,
    HEClient,
    HEServer,
    PackingSpec,
    PublicContext,
)
from privkeras.layers import PolynomialActivation

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def main() -> None:
    keras.utils.set_random_seed(0)
    data = datasets.digits(images=True)

    # -- train in plaintext: an HE-friendly CNN ------------------------------------------------
    model = pk.PrivateSequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3),
            PolynomialActivation("square"),  # instead of relu: CKKS only adds and multiplies
            keras.layers.AveragePooling2D(2),  # instead of max pooling, for the same reason
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=LOSS, metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=15, batch_size=32, verbose=0)
    plain = model.predict(data.x_test, verbose=0)
    print(f"plaintext test accuracy: {np.mean(plain.argmax(1) == data.y_test):.3f}")

    # -- 1. one line: compile for HE, predict on encrypted inputs -----------------------------
    model.compile(loss=LOSS, metrics=["accuracy"], privacy="he")
    encrypted = model.predict(data.x_test, verbose=0)
    print(
        f"encrypted test accuracy: {np.mean(encrypted.argmax(1) == data.y_test):.3f}, "
        f"agreement with plaintext {np.mean(encrypted.argmax(1) == plain.argmax(1)):.3f}, "
        f"max logit error {np.abs(encrypted - plain).max():.1e}"
    )
    print("engine report:", model.privacy_report())

    # -- 2. the roles, as on two machines: only bytes cross -------------------------------------
    pool = EvaluationPool()  # the server's cores; workers start on first use
    server = HEServer(model, pool=pool)  # the model owner; CKKS parameters from the model's depth
    spec_bytes = server.packing(block=128).to_bytes()  # public: layouts, no weights

    spec = PackingSpec.from_bytes(spec_bytes)  # on the client
    client = HEClient(spec.parameters)  # generates the keys; the secret key stays here
    context_bytes = client.public_context(spec).to_bytes()  # public key + relin/Galois keys
    x = data.x_test[:512]
    requests = [client.encrypt_to_bytes(x[s : s + spec.block], spec) for s in range(0, 512, 128)]

    public = PublicContext.from_bytes(context_bytes)  # on the server: no secret key in it
    batches = (EncryptedBatch.from_bytes(r, public, load=False) for r in requests)
    responses = [out.to_bytes() for out in server.evaluate_many(batches, public)]
    print(f"server pool: {pool.describe()}")
    pool.close()

    outputs = np.concatenate(  # on the client
        [client.decrypt(EncryptedBatch.from_bytes(r, client), spec) for r in responses]
    )
    print(
        f"client/server: {len(requests)} groups, {sum(map(len, requests)) / 1e6:.1f} MB up, "
        f"{sum(map(len, responses)) / 1e6:.2f} MB down, public context "
        f"{len(context_bytes) / 1e6:.1f} MB; agreement with plaintext "
        f"{np.mean(outputs.argmax(1) == plain[:512].argmax(1)):.3f}"
    )
    try:
        server.decrypt(responses[0])
    except pk.PrivkerasError as error:
        print(f"server.decrypt -> {type(error).__name__}: {error}")


if __name__ == "__main__":
    main()
