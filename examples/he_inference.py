"""Encrypted inference with homomorphic encryption (CKKS): the server never sees the inputs.

A small CNN is trained in plaintext on scikit-learn's digits (it ships with
scikit-learn: nothing is downloaded), with a `PolynomialActivation` where a
relu would be, so that CKKS can evaluate it. Then:

1. `compile(privacy="he")` and `predict`: one line, both roles in this process.
2. The same with the roles spelled out, as on two machines: only bytes cross
   between the client (who holds the secret key) and the server (who holds
   the model and a public context).

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
    server = HEServer(model)  # the model owner; picks CKKS parameters from the model's depth
    spec_bytes = server.packing(n_samples=64).to_bytes()  # public: layouts, no weights

    spec = PackingSpec.from_bytes(spec_bytes)  # on the client
    client = HEClient(spec.parameters)  # generates the keys; the secret key stays here
    context_bytes = client.public_context(spec).to_bytes()  # public key + relin/Galois keys
    request = client.encrypt_to_bytes(data.x_test[:64], spec)

    public = PublicContext.from_bytes(context_bytes)  # on the server: no secret key in it
    response = server.evaluate(EncryptedBatch.from_bytes(request, public), public).to_bytes()

    outputs = client.decrypt(EncryptedBatch.from_bytes(response, client), spec)  # on the client
    print(
        f"client/server: {len(request) / 1e6:.1f} MB up, {len(response) / 1e6:.2f} MB down, "
        f"public context {len(context_bytes) / 1e6:.1f} MB; predictions "
        f"{outputs.argmax(1)[:10].tolist()} (plaintext {plain.argmax(1)[:10].tolist()})"
    )
    try:
        server.decrypt(response)
    except pk.PrivkerasError as error:
        print(f"server.decrypt -> {type(error).__name__}: {error}")


if __name__ == "__main__":
    main()
