"""Real architectures, taken unchanged from their libraries, through the adapters.

`hk.nets.ResNet` (BatchNorm state, positional `is_training`) in a
`HaikuLayer`; a Flax Linen causal transformer on integer token ids
(`nn.Embed`, `nn.MultiHeadDotProductAttention` with `nn.make_causal_mask`,
`nn.Dropout`, `nn.LayerNorm`) in a `FlaxLayer`; an NNX model with
`nnx.MultiHeadAttention` and `nnx.BatchNorm` in an `NnxLayer`; an Equinox
model with `eqx.nn.Conv2d` and `eqx.nn.MultiheadAttention` in an
`EquinoxLayer`. Only the small wrappers composing the library's classes are
written here.

On every backend: the parameter counts equal the framework's own count, and
`predict` equals the framework's own inference-mode apply. On every training
backend (`needs_training`): `fit` with Adam overfits one fixed batch (the loss
falls, BatchNorm statistics move), and one SGD step through `train_on_batch`
equals a pure-JAX step (`jax.grad` of the same loss on the framework's own
apply, from the same parameters, on the same batch) within float32 tolerance.
Sizes are tiny (16x16 images, batch 8) to keep the module fast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

from conftest import BACKEND, to_numpy

hk = pytest.importorskip("haiku", reason="Haiku (dm-haiku) is not installed")
nn = pytest.importorskip("flax.linen", reason="Flax is not installed")
nnx = pytest.importorskip("flax.nnx", reason="Flax NNX is not installed")
eqx = pytest.importorskip("equinox", reason="Equinox is not installed")

from jaxlayer import EquinoxLayer, FlaxLayer, HaikuLayer, NnxLayer  # noqa: E402

BATCH = 8
CLASSES = 4
VOCAB = 11
SEQ = 8
ADAM_STEPS = 5
SGD_RATE = 0.05

# ------------------------------------------------------------------ models


def small_resnet(images, is_training):
    """`hk.nets.ResNet` itself, in its smallest configuration (one block per group)."""
    net = hk.nets.ResNet(
        blocks_per_group=(1, 1, 1, 1),
        num_classes=CLASSES,
        bottleneck=False,
        channels_per_group=(8, 8, 8, 8),  # few distinct shapes: a quick init
        initial_conv_config={"output_channels": 8, "kernel_shape": 3, "stride": 1},
    )
    return net(images, is_training)  # the flag positionally, as Haiku documents it


def resnet18(images, is_training):
    return hk.nets.ResNet18(num_classes=1000)(images, is_training)


class CausalTransformer(nn.Module):
    """A decoder-only transformer on token ids, from Flax Linen's own layers."""

    vocab: int = VOCAB
    width: int = 16
    heads: int = 2
    depth: int = 2
    max_len: int = SEQ
    dropout: float = 0.1

    @nn.compact
    def __call__(self, tokens, training):
        deterministic = not training
        x = nn.Embed(self.vocab, self.width)(tokens)
        x = x + nn.Embed(self.max_len, self.width)(jnp.arange(tokens.shape[1]))
        mask = nn.make_causal_mask(tokens)
        for _ in range(self.depth):
            h = nn.MultiHeadDotProductAttention(
                num_heads=self.heads, dropout_rate=self.dropout, deterministic=deterministic
            )(nn.LayerNorm()(x), mask=mask)
            x = x + nn.Dropout(self.dropout, deterministic=deterministic)(h)
            h = nn.Dense(self.width)(nn.gelu(nn.Dense(2 * self.width)(nn.LayerNorm()(x))))
            x = x + nn.Dropout(self.dropout, deterministic=deterministic)(h)
        return nn.Dense(self.vocab)(nn.LayerNorm()(x))


class NnxAttentionClassifier(nnx.Module):
    """Sequence classifier: `nnx.MultiHeadAttention` then `nnx.BatchNorm`."""

    def __init__(self, features: int, width: int, heads: int, classes: int, rngs: Any):
        self.embed = nnx.Linear(features, width, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(
            num_heads=heads, in_features=width, decode=False, rngs=rngs
        )
        self.norm = nnx.BatchNorm(width, rngs=rngs)
        self.out = nnx.Linear(width, classes, rngs=rngs)

    def __call__(self, x):
        h = self.embed(x)
        h = self.norm(h + self.attention(h))
        return self.out(jnp.mean(h, axis=1))


class EqxConvAttention(eqx.Module):
    """One image (channels first): `eqx.nn.Conv2d`, then attention over its pixels."""

    conv: Any
    attention: Any
    out: Any

    def __init__(self, channels: int, width: int, heads: int, classes: int, key: Any):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv = eqx.nn.Conv2d(channels, width, kernel_size=3, stride=2, padding=1, key=k1)
        self.attention = eqx.nn.MultiheadAttention(heads, width, key=k2)
        self.out = eqx.nn.Linear(width, classes, key=k3)

    def __call__(self, image):
        h = jax.nn.relu(self.conv(image))
        tokens = h.reshape(h.shape[0], -1).T  # (pixels, width)
        tokens = tokens + self.attention(tokens, tokens, tokens)
        return self.out(jnp.mean(tokens, axis=0))


# ------------------------------------------------------------------- cases


def images_nhwc(seed=0):
    return np.random.RandomState(seed).normal(size=(BATCH, 16, 16, 3)).astype("float32")


def labels(seed=0):
    return np.random.RandomState(seed + 100).randint(0, CLASSES, BATCH).astype("int32")


def token_batch(seed=0):
    tokens = np.random.RandomState(seed).randint(0, VOCAB, (BATCH, SEQ + 1)).astype("int32")
    return tokens[:, :-1], tokens[:, 1:]  # next-token targets


@dataclasses.dataclass
class Case:
    """A framework model, its layer, and its own apply as a pure function.

    `apply(params, state, x, training)` returns `(outputs, new_state)` using
    only the framework's API, on the layer's params/state trees.
    """

    make_layer: Callable[[bool], Any]  # dropout on or off
    apply: Callable[[Any, Any, Any, bool], tuple]
    data: Callable[[], tuple]
    framework_params: Callable[[Any], int]  # the framework's own count
    has_stats: bool
    adam_rate: float = 0.03  # overfits the batch in a few steps


def resnet_case() -> Case:
    transformed = hk.transform_with_state(small_resnet)

    def apply(params, state, x, training):
        return transformed.apply(params, state, None, x, training)

    def framework_params(layer):
        params, _ = jax.eval_shape(
            lambda key, x: transformed.init(key, x, True), jax.random.key(0), images_nhwc()
        )
        return hk.data_structures.tree_size(params)

    return Case(
        lambda dropout: HaikuLayer(transformed, seed=1),
        apply,
        lambda: (images_nhwc(), labels()),
        framework_params,
        has_stats=True,
    )


def transformer_case() -> Case:
    def module(dropout):
        return CausalTransformer(dropout=0.1 if dropout else 0.0)

    def apply(params, state, x, training):
        return module(False).apply({**params, **state}, x, training), state

    def framework_params(layer):
        variables = jax.eval_shape(
            lambda key, x: module(True).init(key, x, False), jax.random.key(0), token_batch()[0]
        )
        return sum(np.size(leaf) for leaf in jax.tree.leaves(variables["params"]))

    return Case(
        lambda dropout: FlaxLayer(module(dropout), seed=1),
        apply,
        token_batch,
        framework_params,
        has_stats=False,
    )


def nnx_case() -> Case:
    def make_model():
        return NnxAttentionClassifier(6, 16, 2, CLASSES, rngs=nnx.Rngs(0))

    def data():
        x = np.random.RandomState(3).normal(size=(BATCH, 5, 6)).astype("float32")
        return x, labels(3)

    graphdef, *templates = nnx.split(make_model(), nnx.Param, nnx.BatchStat, ...)

    def apply(params, state, x, training):
        # The framework's own split/merge: fresh State objects with these values
        # (the layer's state also holds the RNG streams, which this model does
        # not draw from: no dropout).
        params_state, stats_state, rest = (jax.tree.map(lambda v: v, t) for t in templates)
        nnx.replace_by_pure_dict(params_state, params)
        stats = stats_state.to_pure_dict()
        nnx.replace_by_pure_dict(stats_state, {k: state[k] for k in stats})
        model = nnx.merge(graphdef, params_state, stats_state, rest)
        model.train() if training else model.eval()
        outputs = model(x)
        return outputs, nnx.state(model, nnx.BatchStat).to_pure_dict()

    def framework_params(layer):
        return sum(np.size(x) for x in jax.tree.leaves(nnx.state(layer.module, nnx.Param)))

    return Case(
        lambda dropout: NnxLayer(make_model(), seed=1),
        apply,
        data,
        framework_params,
        has_stats=True,
    )


def equinox_case() -> Case:
    model = EqxConvAttention(3, 8, 2, CLASSES, key=jax.random.key(0))
    _, static = eqx.partition(model, eqx.is_inexact_array)

    def data():
        x = np.random.RandomState(4).normal(size=(BATCH, 3, 16, 16)).astype("float32")
        return x, labels(4)

    def apply(params, state, x, training):
        return jax.vmap(eqx.combine(params, static))(x), state

    def framework_params(layer):
        return sum(np.size(x) for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))

    return Case(
        lambda dropout: EquinoxLayer(model, seed=1),
        apply,
        data,
        framework_params,
        has_stats=False,
        adam_rate=0.1,  # attention pooled over pixels learns slowly
    )


CASES = {
    "haiku_resnet": resnet_case,
    "flax_transformer": transformer_case,
    "nnx_attention_batchnorm": nnx_case,
    "equinox_conv_attention": equinox_case,
}


def make_model(case: Case, dropout: bool = True):
    x, _ = case.data()
    layer = case.make_layer(dropout)
    model = keras.Sequential([keras.Input(x.shape[1:], dtype=x.dtype.name), layer])
    return model, layer


def sparse_ce(logits, targets):
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, targets[..., None], axis=-1))


def float_leaves(tree):
    """The float leaves (BatchNorm statistics; not RNG keys or counters), as NumPy."""
    leaves = [np.asarray(to_numpy(x)) for x in jax.tree.leaves(tree)]
    return [x for x in leaves if x.dtype.kind == "f"]


# ------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", list(CASES))
def test_parameter_count_equals_the_framework_count(name):
    case = CASES[name]()
    model, layer = make_model(case)
    trainable = sum(int(np.prod(v.shape)) for v in layer.trainable_weights)
    assert trainable == case.framework_params(layer)
    assert model.count_params() == trainable + sum(
        int(np.prod(v.shape)) for v in layer.non_trainable_weights
    )
    if name == "haiku_resnet":
        # BatchNorm's moving statistics are Haiku state, non-trainable here.
        init = hk.transform_with_state(small_resnet).init
        _, state = jax.eval_shape(
            lambda key, x: init(key, x, True), jax.random.key(0), images_nhwc()
        )
        assert sum(int(np.prod(v.shape)) for v in layer.non_trainable_weights) == (
            hk.data_structures.tree_size(state)
        )


def test_resnet18_parameter_count_equals_haiku_count():
    """The full `hk.nets.ResNet18` (11.7M parameters, as torchvision's ResNet-18).

    Shapes only: `jax.eval_shape` of Haiku's init, the layer built from
    zeros of those shapes (running the init eagerly would only cost time).
    """
    transformed = hk.transform_with_state(resnet18)
    x = np.zeros((1, 32, 32, 3), "float32")
    params, state = jax.eval_shape(
        lambda key, x: transformed.init(key, x, True), jax.random.key(0), x
    )
    zeros = lambda tree: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), tree)  # noqa: E731
    layer = HaikuLayer(transformed, params=zeros(params), state=zeros(state))
    layer.build(x.shape)
    trainable = sum(int(np.prod(v.shape)) for v in layer.trainable_weights)
    assert trainable == hk.data_structures.tree_size(params) == 11_689_512
    assert sum(int(np.prod(v.shape)) for v in layer.non_trainable_weights) == (
        hk.data_structures.tree_size(state)
    )
    assert "res_net18.block_group_0.block_0.batchnorm_0.offset" in {
        v.name for v in layer.trainable_weights
    }


@pytest.mark.parametrize("name", list(CASES))
def test_predict_equals_the_framework_apply(name):
    case = CASES[name]()
    model, layer = make_model(case)
    x, _ = case.data()
    expected, _ = case.apply(layer.get_params(), layer.get_state(), x, False)
    np.testing.assert_allclose(
        model.predict(x, batch_size=BATCH, verbose=0), expected, rtol=1e-4, atol=1e-5
    )


@pytest.mark.needs_training
@pytest.mark.parametrize("name", list(CASES))
def test_fit_with_adam_overfits_one_batch(name):
    case = CASES[name]()
    model, layer = make_model(case)
    x, y = case.data()
    model.compile(
        optimizer=keras.optimizers.Adam(case.adam_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = [np.array(to_numpy(w)) for w in layer.trainable_weights]
    stats_before = float_leaves(layer.get_state())
    history = model.fit(x, y, batch_size=BATCH, epochs=ADAM_STEPS, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < 0.85 * losses[0], losses
    after = [to_numpy(w) for w in layer.trainable_weights]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    if case.has_stats:
        stats_after = float_leaves(layer.get_state())
        assert stats_after and all(
            not np.array_equal(a, b) for a, b in zip(stats_before, stats_after)
        )


@pytest.mark.skipif(
    BACKEND != "jax",
    reason="jax backend only, to keep the module fast (the contract suite checks an SGD step "
    "on every backend); this test also passes on tensorflow and torch",
)
@pytest.mark.parametrize("name", list(CASES))
def test_one_sgd_step_equals_a_pure_jax_step(name):
    case = CASES[name]()
    model, layer = make_model(case, dropout=False)  # same function as the reference
    x, y = case.data()
    model.compile(
        optimizer=keras.optimizers.SGD(SGD_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    params, state = layer.get_params(), layer.get_state()

    def loss_fn(params):
        logits, new_state = case.apply(params, state, x, True)
        return sparse_ce(logits, y), new_state

    (loss, new_state), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    expected_params = jax.tree.map(lambda p, g: p - SGD_RATE * g, params, grads)
    keras_loss = model.train_on_batch(x, y)
    np.testing.assert_allclose(keras_loss, loss, rtol=1e-5)
    got_params = layer.get_params()
    for (path, got), want, start in zip(
        jax.tree_util.tree_leaves_with_path(got_params),
        jax.tree.leaves(expected_params),
        jax.tree.leaves(params),
    ):
        where = jax.tree_util.keystr(path)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=where)
        # The step itself, not only the (much larger) parameters.
        np.testing.assert_allclose(
            np.asarray(got) - start, np.asarray(want) - start, rtol=1e-3, atol=1e-6, err_msg=where
        )
    if case.has_stats:
        got_stats = float_leaves(layer.get_state())
        want_stats = float_leaves(new_state)
        assert len(got_stats) == len(want_stats) > 0
        for got, want in zip(got_stats, want_stats):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
