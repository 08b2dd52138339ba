"""The DP-SGD train step under the TensorFlow Keras backend.

Keras wraps `train_step` in a `tf.function` (`reduce_retracing=True`); the
batches come from a `tf.data` pipeline whose batch dimension is declared
`None`, so Poisson batches of every size run through one trace. An empty
batch arrives as one placeholder row of weight -1 (no loss, no gradient, no
metric): guarding the gradient with `tf.cond` instead made every step 1.6x
slower on the CNN.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from privkeras.backends.dpsgd.clipping import same_padding
from privkeras.backends.dpsgd.noise import DEVICE_WORDS_PER_PAIR
from privkeras.backends.dpsgd.sampling import PLACEHOLDER_WEIGHT, SampledBatches
from privkeras.backends.dpsgd.trainer import DPTrainer

__all__ = ["TensorFlowDPTrainer"]


def _patches_by_space_to_depth(inputs, kh: int, kw: int, stride: int):
    """Patches of a stride-s convolution whose kernel is a multiple of s.

    After `space_to_depth(s)` the convolution has stride 1 and a
    `(kh/s, kw/s)` kernel, so its patches are `(kh/s) * (kw/s)` plain slices,
    2x faster than `tf.image.extract_patches`. Their columns come in
    `(qh, qw, rh, rw, c)` order (kh = s qh + rh); the returned order maps
    the kernel's `(kh, kw, c)` rows to them.
    """
    channels = int(inputs.shape[-1])
    qh, qw = kh // stride, kw // stride
    out_h = (int(inputs.shape[1]) - kh) // stride + 1
    out_w = (int(inputs.shape[2]) - kw) // stride + 1
    used = inputs[:, : (out_h - 1) * stride + kh, : (out_w - 1) * stride + kw, :]
    blocks = tf.nn.space_to_depth(used, stride)
    patches = tf.concat(
        [blocks[:, i : i + out_h, j : j + out_w, :] for i in range(qh) for j in range(qw)], -1
    )
    # Kernel row (r_h, r_w, c) lives in column ((q_h, q_w), (r_h % s, r_w % s), c).
    r_h, r_w, c = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(channels), indexing="ij")
    block = (r_h // stride) * qw + r_w // stride
    offset = (r_h % stride) * stride + r_w % stride
    order = (block * stride * stride + offset) * channels + c
    return patches, order.reshape(-1).astype(np.int32)


class TensorFlowWordOps:
    """`noise.gaussian_from_words` on TensorFlow uint64 tensors (XLA compiles it)."""

    bitwise_and = staticmethod(tf.bitwise.bitwise_and)
    bitwise_or = staticmethod(tf.bitwise.bitwise_or)
    bitwise_xor = staticmethod(tf.bitwise.bitwise_xor)
    log = staticmethod(tf.math.log)
    sqrt = staticmethod(tf.math.sqrt)
    tan = staticmethod(tf.math.tan)

    @staticmethod
    def left_shift(x, n):
        return tf.bitwise.left_shift(x, tf.constant(n, tf.uint64))

    @staticmethod
    def as_float64(x):
        return tf.bitcast(x, tf.float64)

    @staticmethod
    def as_words(x):
        return tf.bitcast(x, tf.uint64)

    @staticmethod
    def concat(parts):
        return tf.concat(parts, 0)

    @staticmethod
    def constant(value):
        return tf.constant(int(value), tf.uint64)


class TensorFlowDPTrainer(DPTrainer):
    """`DPTrainer` on `tf.GradientTape`."""

    word_ops = TensorFlowWordOps
    device_word_buffers = 0  # tf.data may hold several prefetched steps' words

    def train_step(self, data: Any) -> dict[str, Any]:
        if self.noise_route == "device":  # The words travel with the batch (see `batches`).
            *data, self._step_words = data
            data = tuple(data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            taps, y_pred = self.forward(x)
            losses = self.loss(y, y_pred, sample_weight)
            total = tf.reduce_sum(losses)

        tap_grads = tape.gradient(total, [tap.tensor for tap in taps])
        grads = self.private_gradients(taps, tap_grads)
        regularization, reg_grads = self._regularization_gradients()
        return self.finish(x, y, y_pred, sample_weight, losses, grads, regularization, reg_grads)

    def real_rows(self, real, *tensors):
        return tuple(tf.boolean_mask(t, real) for t in tensors)

    def _regularization_gradients(self):
        with tf.GradientTape() as tape:
            regularization = self.regularization()
        if regularization is None:
            return None, None
        return regularization, tape.gradient(regularization, self._variables)

    # -- clipping.PerExampleGradientSource ---------------------------------------------
    def extract_patches(self, inputs: Any, layer: keras.layers.Conv2D) -> tuple[Any, Any]:
        (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
        if layer.padding == "same":  # Padding first, then VALID, is 2-5x faster on CPU.
            top, bottom = same_padding(int(inputs.shape[1]), kh, sh, dh)
            left, right = same_padding(int(inputs.shape[2]), kw, sw, dw)
            inputs = tf.pad(inputs, [[0, 0], [top, bottom], [left, right], [0, 0]])
        if sh == sw > 1 and dh == dw == 1 and kh % sh == 0 and kw % sw == 0:
            return _patches_by_space_to_depth(inputs, kh, kw, sh)
        patches = tf.image.extract_patches(
            inputs,
            sizes=[1, kh, kw, 1],
            strides=[1, sh, sw, 1],
            rates=[1, dh, dw, 1],
            padding="VALID",
        )
        return patches, None

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
    def on_accelerator(self) -> bool:
        return bool(tf.config.list_logical_devices("GPU"))

    def can_call_host(self) -> bool:
        return not self.model.jit_compile  # XLA cannot call back into Python.

    def noised_on_host(self, means):
        # numpy on the host, not the same arithmetic in the graph: TensorFlow's float64
        # kernels took 3 ms a step for it (MLP), numpy 0.4 ms plus 0.3 ms for the round trip.
        flat = tf.numpy_function(
            self.noised_by_host, [self.flatten(means)], tf.float32, stateful=True
        )
        flat.set_shape([self._noise_size])
        return self.unflatten(flat)

    def device_words(self):
        return self._step_words

    def batches(self, source: SampledBatches) -> tf.data.Dataset:
        """The sampler's batches as a `tf.data` pipeline, kept for the next fit when the
        training arrays are equal (building one traces its map: 60-100 ms)."""
        # TF's gradient of reduce_mean fails on empty tensors (LayerNormalization,
        # GroupNormalization): an empty Poisson batch travels as one placeholder row.
        source.pad_empty = True
        self._source = source
        arrays = source.arrays
        kept = getattr(self, "_pipeline", None)
        if kept is not None and kept.serves(arrays, len(source)):
            return kept.dataset
        self._pipeline = _Pipeline(self, arrays, len(source))
        return self._pipeline.dataset

    def draw_batch(self, index) -> tuple[np.ndarray, np.ndarray]:
        """The current fit's batch `index` (stable across fits: the pipeline calls this)."""
        return self._source.draw(int(index))


class _Pipeline:
    """The tf.data pipeline of one set of training arrays."""

    def __init__(self, trainer: TensorFlowDPTrainer, arrays, steps: int):
        self.steps = steps
        self.tensors = tuple(tf.constant(a) for a in (arrays.x, arrays.y, arrays.sample_weight))
        x, y, weights = self.tensors
        words = trainer.noise_route == "device"
        word_count = DEVICE_WORDS_PER_PAIR * ((trainer._noise_size + 1) // 2)

        def load(index):
            # The sampler picks indices on the host; TF gathers the rows. (Not
            # Dataset.from_generator: it sets glibc's M_TRIM_THRESHOLD to 128 KB for
            # the whole process, and every later large allocation then faults fresh
            # pages: the CNN step became 35% slower.)
            indices, placeholder = tf.numpy_function(
                trainer.draw_batch, [index], [tf.int64, tf.bool], stateful=True
            )
            indices.set_shape([None])
            placeholder.set_shape([])
            batch_weights = tf.gather(weights, indices)
            batch_weights = tf.where(placeholder, PLACEHOLDER_WEIGHT, batch_weights)
            batch = (tf.gather(x, indices), tf.gather(y, indices), batch_weights)
            if not words:
                return batch
            # The device route's words, drawn on the host (AES-CTR) in order, one per step.
            step_words = tf.numpy_function(trainer.take_host, [], tf.uint64, stateful=True)
            step_words.set_shape([word_count])
            return (*batch, step_words)

        self.dataset = tf.data.Dataset.range(steps).map(load).prefetch(2)  # in order

    def serves(self, arrays, steps: int) -> bool:
        """Whether this pipeline holds exactly these arrays (compared, not trusted by id)."""
        if steps != self.steps:
            return False
        new = (arrays.x, arrays.y, arrays.sample_weight)
        return all(
            old.shape == a.shape and old.dtype == a.dtype and np.array_equal(old.numpy(), a)
            for old, a in zip(self.tensors, new)
        )
