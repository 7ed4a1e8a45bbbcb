"""GradientHealth on models that customise their step (issue 18).

The model classes are the keras.io guides "Customizing what happens in `fit()`"
for TensorFlow, JAX and PyTorch, copied as written there (the custom
`test_step` left out; the GAN shrunk to 8x8 images). Each test runs under its
guide's backend only. Every signal whose source the step still exposes must
be logged with the right value; every other one must be named by one
`GradientHealthWarning`, never a crash.
"""

import math
import warnings

import keras
import numpy as np
import pytest
from keras import layers

from keras_fanin import GradientHealth, GradientHealthWarning
from tests.helpers import grad_norms, read_scalars

BACKEND = keras.backend.backend()
if BACKEND == "tensorflow":
    import tensorflow as tf
elif BACKEND == "jax":
    import jax
elif BACKEND == "torch":
    import torch

only_tf = pytest.mark.skipif(BACKEND != "tensorflow", reason="the TensorFlow guide")
only_jax = pytest.mark.skipif(BACKEND != "jax", reason="the JAX guide")
only_torch = pytest.mark.skipif(BACKEND != "torch", reason="the PyTorch guide")

BATCH = 16
STEPS = 3


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.random((BATCH * STEPS, 32)).astype("float32")
    y = rng.random((BATCH * STEPS, 1)).astype("float32")
    sw = rng.random((BATCH * STEPS, 1)).astype("float32")
    return x, y, sw


def guide_model(cls, seed=0):
    """The guides' model: `Input(32) -> Dense(1)`, of the guide's class."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(32,))
    outputs = keras.layers.Dense(1)(inputs)
    return cls(inputs, outputs)


def fit(model, x, y=None, health=None, expect=None, **kwargs):
    """`model.fit` with `health`; the GradientHealthWarning texts it raised,
    which must include one matching `expect` when given."""
    kwargs = {"batch_size": BATCH, "epochs": 1, "verbose": 0, "shuffle": False,
              **kwargs}  # fmt: skip
    if expect is None:
        recording = warnings.catch_warnings(record=True)
    else:
        recording = pytest.warns(GradientHealthWarning, match=expect)
    with recording as caught:
        warnings.simplefilter("always")
        model.fit(x, y, callbacks=[health], **kwargs)
    return [str(w.message) for w in caught if w.category is GradientHealthWarning]


def same_series(written, kept):
    """An event file's series equals the history's."""
    assert [s for s, _ in written] == [s for s, _ in kept]
    assert [v for _, v in written] == pytest.approx([v for _, v in kept])


def finite_series(series, steps=tuple(range(STEPS))):
    """The values of one logged tag: one at each of `steps`, each finite."""
    assert [s for s, _ in series] == list(steps)
    values = [v for _, v in series]
    assert all(math.isfinite(v) for v in values), values
    return values


def first_step(model, x, y, loss=None):
    """What step 0 must log for the guide model, from an independent gradient
    and forward pass (before fit: the initial weights, the first batch)."""
    loss = loss or keras.losses.MeanSquaredError()
    name = model.layers[-1].name
    out = keras.ops.convert_to_numpy(model(x[:BATCH], training=True))
    norms = grad_norms(model, x[:BATCH], y[:BATCH], loss)
    return {"grad_norm": norms[name], "activation_std": float(np.std(out))}


def assert_step_signals(tmp_path, health, model, first, activations=True):
    """grad_norm, update_ratio, weight_norm (and activation_std) of the Dense
    layer at every step, in the history and the event file, with step 0's
    values equal to `first`'s."""
    name = model.layers[-1].name
    scalars = read_scalars(tmp_path)
    signals = ["grad_norm", "update_ratio", "weight_norm"]
    if activations:
        signals.append("activation_std")
    for signal in signals:
        tag = f"{signal}/{name}"
        same_series(scalars[tag], health.history[tag])
        values = finite_series(health.history[tag])
        assert all(v > 0 for v in values), (tag, values)
    assert health.history[f"grad_norm/{name}"][0][1] == pytest.approx(
        first["grad_norm"], rel=1e-5
    )
    if activations:
        assert health.history[f"activation_std/{name}"][0][1] == pytest.approx(
            first["activation_std"], rel=1e-4
        )
    else:
        assert f"activation_std/{name}" not in scalars


def assert_probe(health, model, probe, loss=None, gradients=True):
    """The probe measured at the start and the end: its last activation_std
    (and grad_norm) equal to an independent forward pass (and gradient) on the
    whole probe batch with the final weights."""
    name = model.layers[-1].name
    out = keras.ops.convert_to_numpy(model(probe[0], training=True))
    stds = finite_series(health.probe_history[f"activation_std/{name}"], [0, STEPS])
    assert stds[-1] == pytest.approx(float(np.std(out)), rel=1e-4)
    if gradients:
        loss = loss or keras.losses.MeanSquaredError()
        expected = grad_norms(model, *probe[:2], loss)[name]
        norms = finite_series(health.probe_history[f"grad_norm/{name}"], [0, STEPS])
        assert norms[-1] == pytest.approx(expected, rel=1e-5)


def assert_trains_as_without(model, cls, x, y, **kwargs):
    """`model`, fitted with the callback, has the weights a twin fitted
    without it has: the step ran unchanged."""
    twin = guide_model(cls)
    twin.compile(optimizer="adam", **kwargs)
    twin.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    for got, want in zip(model.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def mse_with(sample_weight):
    mse = keras.losses.MeanSquaredError()
    return lambda y_true, y_pred: mse(y_true, y_pred, sample_weight=sample_weight)


# -- every backend ---------------------------------------------------------------


class OwnComputeLoss(keras.Model):
    """Keras's own train step around the model's own `compute_loss` (as the
    docstring of `keras.Model.compute_loss` shows): the compiled MSE plus a
    penalty on the output."""

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):  # fmt: skip
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        return loss + 0.1 * keras.ops.mean(keras.ops.square(y_pred))


def mse_and_penalty(y_true, y_pred):
    mse = keras.losses.MeanSquaredError()(y_true, y_pred)
    return mse + 0.1 * keras.ops.mean(keras.ops.square(y_pred))


@pytest.mark.parametrize("probe", [False, True], ids=["step", "probe"])
def test_own_compute_loss_in_keras_train_step(tmp_path, data, probe):
    x, y, _ = data
    model = guide_model(OwnComputeLoss)
    model.compile(optimizer="adam", loss="mse")
    first = first_step(model, x, y, mse_and_penalty)
    health = GradientHealth(tmp_path, data=(x, y) if probe else None, every_n_steps=1)
    assert fit(model, x, y, health) == []
    assert_step_signals(tmp_path, health, model, first)
    if probe:  # the probe differentiates the model's own loss too
        assert_probe(health, model, (x, y), mse_and_penalty)


# -- TensorFlow ------------------------------------------------------------------


class TFSimple(keras.Model):
    def train_step(self, data):
        # Unpack the data. Its structure depends on your model and
        # on what you pass to `fit()`.
        x, y = data

        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)  # Forward pass
            # Compute the loss value
            # (the loss function is configured in `compile()`)
            loss = self.compute_loss(y=y, y_pred=y_pred)

        # Compute gradients
        trainable_vars = self.trainable_variables
        gradients = tape.gradient(loss, trainable_vars)

        # Update weights
        self.optimizer.apply(gradients, trainable_vars)

        # Update metrics (includes the metric that tracks the loss)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)

        # Return a dict mapping metric names to current value
        return {m.name: m.result() for m in self.metrics}


class TFLowerLevel(keras.Model):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.mae_metric = keras.metrics.MeanAbsoluteError(name="mae")
        self.loss_fn = keras.losses.MeanSquaredError()

    def train_step(self, data):
        x, y = data

        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)  # Forward pass
            # Compute our own loss
            loss = self.loss_fn(y, y_pred)

        # Compute gradients
        trainable_vars = self.trainable_variables
        gradients = tape.gradient(loss, trainable_vars)

        # Update weights
        self.optimizer.apply(gradients, trainable_vars)

        # Compute our own metrics
        self.loss_tracker.update_state(loss)
        self.mae_metric.update_state(y, y_pred)
        return {
            "loss": self.loss_tracker.result(),
            "mae": self.mae_metric.result(),
        }

    @property
    def metrics(self):
        # We list our `Metric` objects here so that `reset_states()` can be
        # called automatically at the start of each epoch
        # or at the start of `evaluate()`.
        return [self.loss_tracker, self.mae_metric]


class TFSampleWeight(keras.Model):
    def train_step(self, data):
        # Unpack the data. Its structure depends on your model and
        # on what you pass to `fit()`.
        if len(data) == 3:
            x, y, sample_weight = data
        else:
            sample_weight = None
            x, y = data

        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)  # Forward pass
            # Compute the loss value.
            # The loss function is configured in `compile()`.
            loss = self.compute_loss(
                y=y,
                y_pred=y_pred,
                sample_weight=sample_weight,
            )

        # Compute gradients
        trainable_vars = self.trainable_variables
        gradients = tape.gradient(loss, trainable_vars)

        # Update weights
        self.optimizer.apply(gradients, trainable_vars)

        # Update the metrics.
        # Metrics are configured in `compile()`.
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred, sample_weight=sample_weight)

        # Return a dict mapping metric names to current value.
        # Note that it will include the loss (tracked in self.metrics).
        return {m.name: m.result() for m in self.metrics}


class TFGAN(keras.Model):
    def __init__(self, discriminator, generator, latent_dim):
        super().__init__()
        self.discriminator = discriminator
        self.generator = generator
        self.latent_dim = latent_dim
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.seed_generator = keras.random.SeedGenerator(1337)

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super().compile()
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn

    def train_step(self, real_images):
        if isinstance(real_images, tuple):
            real_images = real_images[0]
        # Sample random points in the latent space
        batch_size = tf.shape(real_images)[0]
        random_latent_vectors = keras.random.normal(
            shape=(batch_size, self.latent_dim), seed=self.seed_generator
        )

        # Decode them to fake images
        generated_images = self.generator(random_latent_vectors)

        # Combine them with real images
        combined_images = tf.concat([generated_images, real_images], axis=0)

        # Assemble labels discriminating real from fake images
        labels = tf.concat(
            [tf.ones((batch_size, 1)), tf.zeros((batch_size, 1))], axis=0
        )
        # Add random noise to the labels - important trick!
        labels += 0.05 * keras.random.uniform(
            tf.shape(labels), seed=self.seed_generator
        )

        # Train the discriminator
        with tf.GradientTape() as tape:
            predictions = self.discriminator(combined_images)
            d_loss = self.loss_fn(labels, predictions)
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_optimizer.apply(grads, self.discriminator.trainable_weights)

        # Sample random points in the latent space
        random_latent_vectors = keras.random.normal(
            shape=(batch_size, self.latent_dim), seed=self.seed_generator
        )

        # Assemble labels that say "all real images"
        misleading_labels = tf.zeros((batch_size, 1))

        # Train the generator (note that we should *not* update the weights
        # of the discriminator)!
        with tf.GradientTape() as tape:
            predictions = self.discriminator(self.generator(random_latent_vectors))
            g_loss = self.loss_fn(misleading_labels, predictions)
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply(grads, self.generator.trainable_weights)

        # Update metrics and return their value.
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {
            "d_loss": self.d_loss_tracker.result(),
            "g_loss": self.g_loss_tracker.result(),
        }


def gan_networks(latent_dim):
    """The guide's discriminator and generator, on 8x8 images and narrower."""
    discriminator = keras.Sequential(
        [
            keras.Input(shape=(8, 8, 1)),
            layers.Conv2D(4, (3, 3), strides=(2, 2), padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Conv2D(8, (3, 3), strides=(2, 2), padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.GlobalMaxPooling2D(),
            layers.Dense(1),
        ],
        name="discriminator",
    )
    generator = keras.Sequential(
        [
            keras.Input(shape=(latent_dim,)),
            # 32 coefficients to reshape into a 2x2x8 map
            layers.Dense(2 * 2 * 8),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Reshape((2, 2, 8)),
            layers.Conv2DTranspose(8, (4, 4), strides=(2, 2), padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Conv2DTranspose(8, (4, 4), strides=(2, 2), padding="same"),
            layers.LeakyReLU(negative_slope=0.2),
            layers.Conv2D(1, (7, 7), padding="same", activation="sigmoid"),
        ],
        name="generator",
    )
    return discriminator, generator


def assert_gan_signals(tmp_path, health, messages, gan):
    """The GAN's own optimizers hide the gradients: one warning says so; the
    activations of both networks are logged at every step."""
    [message] = messages
    assert "never called `model.optimizer.apply`" in message
    assert "grad_norm, update_ratio and weight_norm are unavailable" in message
    scalars = read_scalars(tmp_path)
    assert not any(tag.startswith(("grad_norm/", "update_ratio/")) for tag in scalars)
    units = [layer.name for net in (gan.generator, gan.discriminator)
             for layer in net.layers]  # fmt: skip
    for name in units:
        finite_series(health.history[f"activation_std/{name}"])
        same_series(
            scalars[f"activation_std/{name}"], health.history[f"activation_std/{name}"]
        )
    leaky = [n for n in units if n.startswith("leaky_re_lu")]
    assert len(leaky) == 5
    for name in leaky:
        finite_series(health.history[f"dead_relu_fraction/{name}"])
    sigmoid = gan.generator.layers[-1].name
    finite_series(health.history[f"saturated_sigmoid_fraction/{sigmoid}"])


@only_tf
def test_tf_guide_gan_with_its_own_optimizers(tmp_path):
    latent_dim = 4
    discriminator, generator = gan_networks(latent_dim)
    images = np.random.default_rng(0).random((8 * STEPS, 8, 8, 1)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(8)
    gan = TFGAN(discriminator=discriminator, generator=generator, latent_dim=latent_dim)
    gan.compile(
        d_optimizer=keras.optimizers.Adam(learning_rate=0.0003),
        g_optimizer=keras.optimizers.Adam(learning_rate=0.0003),
        loss_fn=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    health = GradientHealth(tmp_path, every_n_steps=1)
    messages = fit(gan, dataset.take(STEPS), health=health, batch_size=None,
                   expect="never called")  # fmt: skip
    assert_gan_signals(tmp_path, health, messages, gan)
    assert int(gan.d_optimizer.iterations.numpy()) == STEPS  # it trained


# -- JAX -------------------------------------------------------------------------


class JaxSimple(keras.Model):
    def compute_loss_and_updates(
        self,
        trainable_variables,
        non_trainable_variables,
        metrics_variables,
        x,
        y,
        sample_weight,
        training=False,
    ):
        y_pred, non_trainable_variables = self.stateless_call(
            trainable_variables,
            non_trainable_variables,
            x,
            training=training,
        )
        (
            loss,
            (
                trainable_variables,
                non_trainable_variables,
                metrics_variables,
            ),
        ) = self.stateless_compute_loss(
            trainable_variables,
            non_trainable_variables,
            metrics_variables,
            x=x,
            y=y,
            y_pred=y_pred,
            sample_weight=sample_weight,
            training=training,
        )
        return loss, (y_pred, non_trainable_variables, metrics_variables)

    def train_step(self, state, data):
        (
            trainable_variables,
            non_trainable_variables,
            optimizer_variables,
            metrics_variables,
        ) = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)

        # Get the gradient function.
        grad_fn = jax.value_and_grad(self.compute_loss_and_updates, has_aux=True)

        # Compute the gradients.
        (loss, (y_pred, non_trainable_variables, metrics_variables)), grads = grad_fn(
            trainable_variables,
            non_trainable_variables,
            metrics_variables,
            x,
            y,
            sample_weight,
            training=True,
        )

        # Update trainable variables and optimizer variables.
        trainable_variables, optimizer_variables = self.optimizer.stateless_apply(
            optimizer_variables, grads, trainable_variables
        )

        # Update metrics.
        new_metrics_vars = []
        logs = {}
        for metric in self.metrics:
            this_metric_vars = metrics_variables[
                len(new_metrics_vars) : len(new_metrics_vars) + len(metric.variables)
            ]
            if metric.name == "loss":
                this_metric_vars = metric.stateless_update_state(
                    this_metric_vars, loss, sample_weight=sample_weight
                )
            else:
                this_metric_vars = metric.stateless_update_state(
                    this_metric_vars, y, y_pred, sample_weight=sample_weight
                )
            logs[metric.name] = metric.stateless_result(this_metric_vars)
            new_metrics_vars += this_metric_vars

        # Return metric logs and updated state variables.
        state = (
            trainable_variables,
            non_trainable_variables,
            optimizer_variables,
            new_metrics_vars,
        )
        return logs, state


class JaxLowerLevel(keras.Model):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.mae_metric = keras.metrics.MeanAbsoluteError(name="mae")
        self.loss_fn = keras.losses.MeanSquaredError()

    def compute_loss_and_updates(
        self,
        trainable_variables,
        non_trainable_variables,
        x,
        y,
        sample_weight,
        training=False,
    ):
        y_pred, non_trainable_variables = self.stateless_call(
            trainable_variables,
            non_trainable_variables,
            x,
            training=training,
        )
        loss = self.loss_fn(y, y_pred, sample_weight=sample_weight)
        return loss, (y_pred, non_trainable_variables)

    def train_step(self, state, data):
        (
            trainable_variables,
            non_trainable_variables,
            optimizer_variables,
            metrics_variables,
        ) = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)

        # Get the gradient function.
        grad_fn = jax.value_and_grad(self.compute_loss_and_updates, has_aux=True)

        # Compute the gradients.
        (loss, (y_pred, non_trainable_variables)), grads = grad_fn(
            trainable_variables,
            non_trainable_variables,
            x,
            y,
            sample_weight,
            training=True,
        )

        # Update trainable variables and optimizer variables.
        trainable_variables, optimizer_variables = self.optimizer.stateless_apply(
            optimizer_variables, grads, trainable_variables
        )

        # Update metrics.
        loss_tracker_vars = metrics_variables[: len(self.loss_tracker.variables)]
        mae_metric_vars = metrics_variables[len(self.loss_tracker.variables) :]

        loss_tracker_vars = self.loss_tracker.stateless_update_state(
            loss_tracker_vars, loss, sample_weight=sample_weight
        )
        mae_metric_vars = self.mae_metric.stateless_update_state(
            mae_metric_vars, y, y_pred, sample_weight=sample_weight
        )

        logs = {}
        logs[self.loss_tracker.name] = self.loss_tracker.stateless_result(
            loss_tracker_vars
        )
        logs[self.mae_metric.name] = self.mae_metric.stateless_result(mae_metric_vars)

        new_metrics_vars = loss_tracker_vars + mae_metric_vars

        # Return metric logs and updated state variables.
        state = (
            trainable_variables,
            non_trainable_variables,
            optimizer_variables,
            new_metrics_vars,
        )
        return logs, state

    @property
    def metrics(self):
        # We list our `Metric` objects here so that `reset_states()` can be
        # called automatically at the start of each epoch
        # or at the start of `evaluate()`.
        return [self.loss_tracker, self.mae_metric]


@only_jax
@pytest.mark.parametrize("probe", [False, True], ids=["step", "probe"])
def test_jax_guide_simple_compute_loss_and_updates(tmp_path, data, probe):
    x, y, _ = data
    model = guide_model(JaxSimple)
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    first = first_step(model, x, y)
    health = GradientHealth(tmp_path, data=(x, y) if probe else None, every_n_steps=1)
    # Its auxiliary output is its own, `(y_pred, non_trainable_variables,
    # metrics_variables)`, but carries the metrics state the step threads
    # back: the layer outputs leave `jax.value_and_grad` in it.
    assert fit(model, x, y, health) == []
    assert_step_signals(tmp_path, health, model, first)
    if probe:
        assert_probe(health, model, (x, y))
    assert_trains_as_without(model, JaxSimple, x, y, loss="mse", metrics=["mae"])


@only_jax
@pytest.mark.parametrize("probe", [False, True], ids=["step", "probe"])
def test_jax_guide_lower_level_own_auxiliary_output(tmp_path, data, probe):
    x, y, _ = data
    model = guide_model(JaxLowerLevel)
    # We don't pass a loss or metrics here.
    model.compile(optimizer="adam")
    first = first_step(model, x, y)
    health = GradientHealth(tmp_path, data=(x, y) if probe else None, every_n_steps=1)
    # Its `(y_pred, non_trainable_variables)` cannot carry the layer outputs
    # out of `jax.value_and_grad`: one warning, and the step runs unchanged.
    messages = fit(model, x, y, health, expect="activation_std")
    [message] = [m for m in messages if "activation_std" in m]
    # Compiled without a loss, the probe cannot compute one: one more warning.
    assert len(messages) == 1 + probe
    assert all("compiled without a loss" in m for m in messages if m != message)
    assert "activation signals of the training step (activation_std)" in message
    assert "returns its own auxiliary output" in message
    assert "Pass `data=`" in message
    assert_step_signals(tmp_path, health, model, first, activations=False)
    assert_trains_as_without(model, JaxLowerLevel, x, y)
    if probe:  # the probe has them (compiled without a loss: not its gradients)
        assert_probe(health, model, (x, y), gradients=False)
    # A second fit() with the same callback: no second warning.
    assert fit(model, x, y, health) == []


class JaxOwnLossFunction(keras.Model):
    """Not from the guide: a JAX step differentiating a loss function of its
    own, so the forward pass runs outside `compute_loss_and_updates`."""

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_variables, metrics_variables = state
        x, y = data

        def loss_fn(trainable):
            y_pred, _ = self.stateless_call(trainable, non_trainable, x)
            return keras.ops.mean(keras.ops.square(y - y_pred))

        loss, grads = jax.value_and_grad(loss_fn)(trainable)
        trainable, optimizer_variables = self.optimizer.stateless_apply(
            optimizer_variables, grads, trainable
        )
        state = (trainable, non_trainable, optimizer_variables, metrics_variables)
        return {"loss": loss}, state


@only_jax
def test_jax_step_with_its_own_loss_function(tmp_path, data):
    x, y, _ = data
    model = guide_model(JaxOwnLossFunction)
    model.compile(optimizer="adam")
    first = first_step(model, x, y)
    health = GradientHealth(tmp_path, every_n_steps=1)
    [message] = fit(model, x, y, health, expect="activation_std")
    assert f"calls layer {model.layers[-1].name!r} outside" in message
    assert_step_signals(tmp_path, health, model, first, activations=False)


class JaxDropsMetricsState(keras.Model):
    """Not from the guide: Keras's own `compute_loss_and_updates`, whose
    metrics state the step drops (it returns the state's, unchanged)."""

    def train_step(self, state, data):
        trainable, non_trainable, optimizer_variables, metrics_variables = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        grad_fn = jax.value_and_grad(self.compute_loss_and_updates, has_aux=True)
        (loss, aux), grads = grad_fn(
            trainable, non_trainable, metrics_variables, x, y, sample_weight,
            training=True, optimizer_variables=optimizer_variables,
        )  # fmt: skip
        trainable, optimizer_variables = self.optimizer.stateless_apply(
            optimizer_variables, grads, trainable
        )
        state = (trainable, aux[2], optimizer_variables, metrics_variables)
        return {"loss": loss}, state


@only_jax
def test_jax_step_dropping_the_metrics_state(tmp_path, data):
    x, y, _ = data
    model = guide_model(JaxDropsMetricsState)
    model.compile(optimizer="adam", loss="mse")
    first = first_step(model, x, y)
    health = GradientHealth(tmp_path, every_n_steps=1)
    messages = fit(model, x, y, health)
    if messages:  # unavailable and said so: no NaN logged
        assert "activation signals of the training step" in messages[0]
        assert_step_signals(tmp_path, health, model, first, activations=False)
    else:  # carried another way: all of them
        assert_step_signals(tmp_path, health, model, first)


# -- PyTorch ---------------------------------------------------------------------


class TorchSimple(keras.Model):
    def train_step(self, data):
        # Unpack the data. Its structure depends on your model and
        # on what you pass to `fit()`.
        x, y = data

        # Call torch.nn.Module.zero_grad() to clear the leftover gradients
        # for the weights from the previous train step.
        self.zero_grad()

        # Compute loss
        y_pred = self(x, training=True)  # Forward pass
        loss = self.compute_loss(y=y, y_pred=y_pred)

        # Call torch.Tensor.backward() on the loss to compute gradients
        # for the weights.
        loss.backward()

        trainable_weights = [v for v in self.trainable_weights]
        gradients = [v.value.grad for v in trainable_weights]

        # Update weights
        with torch.no_grad():
            self.optimizer.apply(gradients, trainable_weights)

        # Update metrics (includes the metric that tracks the loss)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)

        # Return a dict mapping metric names to current value
        # Note that it will include the loss (tracked in self.metrics).
        return {m.name: m.result() for m in self.metrics}


class TorchLowerLevel(keras.Model):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.mae_metric = keras.metrics.MeanAbsoluteError(name="mae")
        self.loss_fn = keras.losses.MeanSquaredError()

    def train_step(self, data):
        x, y = data

        # Call torch.nn.Module.zero_grad() to clear the leftover gradients
        # for the weights from the previous train step.
        self.zero_grad()

        # Compute loss
        y_pred = self(x, training=True)  # Forward pass
        loss = self.loss_fn(y, y_pred)

        # Call torch.Tensor.backward() on the loss to compute gradients
        # for the weights.
        loss.backward()

        trainable_weights = [v for v in self.trainable_weights]
        gradients = [v.value.grad for v in trainable_weights]

        # Update weights
        with torch.no_grad():
            self.optimizer.apply(gradients, trainable_weights)

        # Compute our own metrics
        self.loss_tracker.update_state(loss)
        self.mae_metric.update_state(y, y_pred)
        return {
            "loss": self.loss_tracker.result(),
            "mae": self.mae_metric.result(),
        }

    @property
    def metrics(self):
        # We list our `Metric` objects here so that `reset_states()` can be
        # called automatically at the start of each epoch
        # or at the start of `evaluate()`.
        return [self.loss_tracker, self.mae_metric]


class TorchSampleWeight(keras.Model):
    def train_step(self, data):
        # Unpack the data. Its structure depends on your model and
        # on what you pass to `fit()`.
        if len(data) == 3:
            x, y, sample_weight = data
        else:
            sample_weight = None
            x, y = data

        # Call torch.nn.Module.zero_grad() to clear the leftover gradients
        # for the weights from the previous train step.
        self.zero_grad()

        # Compute loss
        y_pred = self(x, training=True)  # Forward pass
        loss = self.compute_loss(
            y=y,
            y_pred=y_pred,
            sample_weight=sample_weight,
        )

        # Call torch.Tensor.backward() on the loss to compute gradients
        # for the weights.
        loss.backward()

        trainable_weights = [v for v in self.trainable_weights]
        gradients = [v.value.grad for v in trainable_weights]

        # Update weights
        with torch.no_grad():
            self.optimizer.apply(gradients, trainable_weights)

        # Update metrics (includes the metric that tracks the loss)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred, sample_weight=sample_weight)

        # Return a dict mapping metric names to current value
        # Note that it will include the loss (tracked in self.metrics).
        return {m.name: m.result() for m in self.metrics}


class TorchGAN(keras.Model):
    def __init__(self, discriminator, generator, latent_dim):
        super().__init__()
        self.discriminator = discriminator
        self.generator = generator
        self.latent_dim = latent_dim
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.seed_generator = keras.random.SeedGenerator(1337)
        self.built = True

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super().compile()
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn

    def train_step(self, real_images):
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if isinstance(real_images, tuple):
            real_images = real_images[0]
        # Sample random points in the latent space
        batch_size = real_images.shape[0]
        random_latent_vectors = keras.random.normal(
            shape=(batch_size, self.latent_dim), seed=self.seed_generator
        )

        # Decode them to fake images
        generated_images = self.generator(random_latent_vectors)

        # Combine them with real images
        real_images = torch.tensor(real_images, device=device)
        combined_images = torch.concat([generated_images, real_images], axis=0)

        # Assemble labels discriminating real from fake images
        labels = torch.concat(
            [
                torch.ones((batch_size, 1), device=device),
                torch.zeros((batch_size, 1), device=device),
            ],
            axis=0,
        )
        # Add random noise to the labels - important trick!
        labels += 0.05 * keras.random.uniform(labels.shape, seed=self.seed_generator)

        # Train the discriminator
        self.zero_grad()
        predictions = self.discriminator(combined_images)
        d_loss = self.loss_fn(labels, predictions)
        d_loss.backward()
        grads = [v.value.grad for v in self.discriminator.trainable_weights]
        with torch.no_grad():
            self.d_optimizer.apply(grads, self.discriminator.trainable_weights)

        # Sample random points in the latent space
        random_latent_vectors = keras.random.normal(
            shape=(batch_size, self.latent_dim), seed=self.seed_generator
        )

        # Assemble labels that say "all real images"
        misleading_labels = torch.zeros((batch_size, 1), device=device)

        # Train the generator (note that we should *not* update the weights
        # of the discriminator)!
        self.zero_grad()
        predictions = self.discriminator(self.generator(random_latent_vectors))
        g_loss = self.loss_fn(misleading_labels, predictions)
        grads = g_loss.backward()
        grads = [v.value.grad for v in self.generator.trainable_weights]
        with torch.no_grad():
            self.g_optimizer.apply(grads, self.generator.trainable_weights)

        # Update metrics and return their value.
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {
            "d_loss": self.d_loss_tracker.result(),
            "g_loss": self.g_loss_tracker.result(),
        }


# The TensorFlow and PyTorch guides' first three models take the same test.
GUIDES = {
    "tensorflow": (TFSimple, TFLowerLevel, TFSampleWeight),
    "torch": (TorchSimple, TorchLowerLevel, TorchSampleWeight),
}
tf_or_torch = pytest.mark.skipif(
    BACKEND not in GUIDES, reason="the TensorFlow and PyTorch guides"
)


@tf_or_torch
@pytest.mark.parametrize("probe", [False, True], ids=["step", "probe"])
def test_guide_simple_train_step(tmp_path, data, probe):
    x, y, _ = data
    model = guide_model(GUIDES[BACKEND][0])
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    first = first_step(model, x, y)
    health = GradientHealth(tmp_path, data=(x, y) if probe else None, every_n_steps=1)
    assert fit(model, x, y, health) == []
    assert_step_signals(tmp_path, health, model, first)
    if probe:
        assert_probe(health, model, (x, y))


@tf_or_torch
def test_guide_lower_level_train_step(tmp_path, data):
    x, y, _ = data
    model = guide_model(GUIDES[BACKEND][1])
    # We don't pass a loss or metrics here.
    model.compile(optimizer="adam")
    first = first_step(model, x, y)
    health = GradientHealth(tmp_path, every_n_steps=1)
    assert fit(model, x, y, health) == []
    assert_step_signals(tmp_path, health, model, first)


@tf_or_torch
def test_guide_sample_weight_train_step(tmp_path, data):
    x, y, sw = data
    model = guide_model(GUIDES[BACKEND][2])
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    first = first_step(model, x, y, mse_with(sw[:BATCH]))
    health = GradientHealth(tmp_path, data=(x, y, sw), every_n_steps=1)
    assert fit(model, x, y, health, sample_weight=sw) == []
    assert_step_signals(tmp_path, health, model, first)
    assert_probe(health, model, (x, y, sw), mse_with(sw))


@only_torch
def test_torch_guide_gan_with_its_own_optimizers(tmp_path):
    latent_dim = 4
    discriminator, generator = gan_networks(latent_dim)
    images = np.random.default_rng(0).random((8 * STEPS, 8, 8, 1)).astype("float32")
    gan = TorchGAN(
        discriminator=discriminator, generator=generator, latent_dim=latent_dim
    )
    gan.compile(
        d_optimizer=keras.optimizers.Adam(learning_rate=0.0003),
        g_optimizer=keras.optimizers.Adam(learning_rate=0.0003),
        loss_fn=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    health = GradientHealth(tmp_path, every_n_steps=1)
    # The guide's DataLoader yields lists, which its train_step does not
    # unpack (Keras 3.15 fails without the callback too): the images as NumPy.
    messages = fit(gan, images, health=health, batch_size=8, expect="never called")
    assert_gan_signals(tmp_path, health, messages, gan)
    assert int(keras.ops.convert_to_numpy(gan.d_optimizer.iterations)) == STEPS


# -- the probe of a guide model ------------------------------------------------


def test_probe_of_a_guide_model_compiled_without_a_loss(tmp_path, data):
    x, y, _ = data
    lower_level = {"tensorflow": "TFLowerLevel", "jax": "JaxLowerLevel",
                   "torch": "TorchLowerLevel"}  # fmt: skip
    model = guide_model(globals()[lower_level[BACKEND]])
    # We don't pass a loss or metrics here.
    model.compile(optimizer="adam")
    health = GradientHealth(tmp_path, data=(x, y), every_n_steps=None)
    # Its train_step computes its own loss, which the probe cannot call: its
    # gradient signals are unavailable, its activation signals are not.
    [message] = fit(model, x, y, health, expect="grad_norm")
    assert "compiled without a loss" in message
    name = model.layers[-1].name
    assert f"grad_norm/{name}" not in health.probe_history
    assert "probe_loss" not in health.probe_history
    assert_probe(health, model, (x, y), gradients=False)
