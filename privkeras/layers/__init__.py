"""Keras layers that make models privacy-friendly.

`PolynomialActivation` replaces activations that encrypted inference cannot
evaluate (relu, sigmoid, tanh) by polynomials, so that a model trained in
plaintext on any Keras backend compiles for `privacy="he"`.
"""

from privkeras.layers.polynomial import PolynomialActivation

__all__ = ["PolynomialActivation"]
