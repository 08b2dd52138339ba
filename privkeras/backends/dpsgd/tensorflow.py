"""The DP-SGD train step under the TensorFlow Keras backend.

Keras wraps `train_step` in a `tf.function` (`reduce_retracing=True`); the
batches come from a `tf.data` pipeline whose batch dimension is declared
`None`, so Poisson batches of every size, zero included, run through one
trace.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from privkeras.backends.dpsgd.clipping import same_padding
from privkeras.backends.dpsgd.noise import HostNoise
from privkeras.backends.dpsgd.sampling import SampledBatches
from privkeras.backends.dpsgd.trainer import DPTrainer

__all__ = ["TensorFlowDPTrainer"]


class TensorFlowDPTrainer(DPTrainer):
    """`DPTrainer` on `tf.GradientTape`."""

    def train_step(self, data: Any) -> dict[str, Any]:
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            taps, y_pred = self.forward(x)
            losses = self.loss(y, y_pred, sample_weight)
            total = tf.reduce_sum(losses)

        def clipped_and_noised():
            tap_grads = tape.gradient(total, [tap.tensor for tap in taps])
            return self.private_gradients(taps, tap_grads)

        def noise_only():  # TF's gradient of some broadcasts fails on empty batches.
            return [n / self.config.divisor for n in self.noise()]

        grads = tf.cond(tf.size(losses) > 0, clipped_and_noised, noise_only)
        regularization, reg_grads = self._regularization_gradients()
        return self.finish(x, y, y_pred, sample_weight, losses, grads, regularization, reg_grads)

    def _regularization_gradients(self):
        with tf.GradientTape() as tape:
            regularization = self.regularization()
        if regularization is None:
            return None, None
        return regularization, tape.gradient(regularization, self._variables)

    # -- clipping.PerExampleGradientSource ---------------------------------------------
    def extract_patches(self, inputs: Any, layer: keras.layers.Conv2D) -> Any:
        (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
        if layer.padding == "same":  # Padding first, then VALID, is 2-5x faster on CPU.
            top, bottom = same_padding(int(inputs.shape[1]), kh, sh, dh)
            left, right = same_padding(int(inputs.shape[2]), kw, sw, dw)
            inputs = tf.pad(inputs, [[0, 0], [top, bottom], [left, right], [0, 0]])
        return tf.image.extract_patches(
            inputs,
            sizes=[1, kh, kw, 1],
            strides=[1, sh, sw, 1],
            rates=[1, dh, dw, 1],
            padding="VALID",
        )

    def per_example_conv_kernels(self, inputs, output_grad, layer):
        if int(inputs.shape[-1]) != 1:
            return None
        # One input channel: a depthwise filter gradient with the examples as channels
        # gives every example's kernel gradient, without patches.
        (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
        batch = tf.shape(inputs)[0]
        out_h, out_w = int(output_grad.shape[1]), int(output_grad.shape[2])
        images = tf.transpose(inputs, (3, 1, 2, 0))  # (1, H, W, B)
        grads = tf.reshape(
            tf.transpose(output_grad, (1, 2, 0, 3)), (1, out_h, out_w, batch * layer.filters)
        )
        kernels = tf.nn.depthwise_conv2d_backprop_filter(
            images,
            tf.stack([kh, kw, batch, layer.filters]),
            grads,
            strides=[1, sh, sw, 1],
            padding=layer.padding.upper(),
            dilations=[1, dh, dw, 1],
        )
        return tf.expand_dims(tf.transpose(kernels, (2, 0, 1, 3)), 3)  # (B, kh, kw, 1, out)

    def per_example_gradients(self, layer, inputs, output_grad):
        variables = list(layer.trainable_variables)
        output_grad = tf.stop_gradient(output_grad)
        with tf.GradientTape() as tape:
            outputs = layer(tf.stop_gradient(inputs), training=True)
            products = tf.reshape(outputs * output_grad, [tf.shape(outputs)[0], -1])
            per_example = tf.reduce_sum(products, axis=1)
        grads = tape.jacobian(per_example, variables, experimental_use_pfor=True)
        return [
            tf.zeros([tf.shape(per_example)[0], *v.shape], v.dtype) if g is None else g
            for g, v in zip(grads, variables)
        ]

    # -- noise and data ----------------------------------------------------------------
    def computes_on_host(self) -> bool:
        if self.model.jit_compile:
            return False  # XLA cannot call back into Python.
        return not tf.config.list_logical_devices("GPU")

    def host_noise(self, source: HostNoise) -> Any:
        flat = tf.numpy_function(source.take, [], tf.float32, stateful=True)
        flat.set_shape([source.size])
        return flat

    def batches(self, source: SampledBatches) -> tf.data.Dataset:
        arrays = source.arrays
        signature = tuple(
            tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype))
            for a in (arrays.x, arrays.y, arrays.sample_weight)
        )
        dataset = tf.data.Dataset.from_generator(source.epoch, output_signature=signature)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(source)))
        return dataset.prefetch(2)
