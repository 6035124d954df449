"""The SoundStorm training objective: options, padding, gradients, bad input, learning."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from soundstorm_jax import SoundStorm
from tiny import init_model, padding_mask, random_codes, tiny_net


def loss_fn(model):
    @jax.jit
    def fn(variables, codes, mask, key, semantic_ids=None, cond=None):
        return model.apply(variables, codes, mask, semantic_ids=semantic_ids, cond=cond,
                           rngs={"masking": key, "dropout": jax.random.fold_in(key, 1)})
    return fn


OPTIONS = [
    dict(),
    dict(schedule="linear", no_replace_prob=0.15, random_token_prob=0.1, label_smoothing=0.1),
    dict(self_cond=True, self_token_critic=True),
    dict(net=dict(grouped_quantizers=2)),
    dict(net=dict(num_semantic_token_ids=12, acoustic_per_semantic=2.0), cond_drop_prob=0.2),
    # One unscanned block: hyper-connections' gradient compiles in ~10 s so, ~35 s as a scan over two blocks.
    dict(net=dict(conformer=dict(num_residual_streams=4, value_residual=True, ff_dropout=0.1, attn_dropout=0.1,
                                 depth=1, scan_layers=False))),
]


@pytest.mark.parametrize("options", OPTIONS)
def test_every_option_gives_finite_loss_metrics_and_gradients(options):
    options = dict(options)
    net = tiny_net(**options.pop("net", {}))
    model = SoundStorm(net, steps=4, **options)
    codes = random_codes(0, (2, 12, net.num_columns))
    mask = padding_mask([12, 9], 12)
    semantic = np.array([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, -1, -1]]) if net.num_semantic_token_ids else None
    variables = init_model(model, codes, mask, semantic_ids=semantic)
    fn = loss_fn(model)
    (loss, metrics), grads = jax.jit(jax.value_and_grad(
        lambda v: fn(v, codes, mask, jax.random.key(3), semantic), has_aux=True))(variables)
    assert loss.shape == () and np.isfinite(float(loss))
    q = net.num_quantizers
    assert {k: v.shape for k, v in metrics.items()} == {
        "generator_loss": (), "critic_loss": (), "accuracy": (), "num_targets": (),
        "level_loss": (q,), "level_accuracy": (q,), "level_targets": (q,)}
    assert float(metrics["level_targets"].sum()) == float(metrics["num_targets"])
    # The per-level losses average back to the generator loss.
    np.testing.assert_allclose(metrics["level_loss"] @ metrics["level_targets"] / metrics["num_targets"],
                               metrics["generator_loss"], rtol=1e-5)
    leaves = jax.tree.leaves(nn.unbox(grads))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


def test_same_key_same_loss_and_padding_content_is_irrelevant():
    model = SoundStorm(tiny_net(), steps=4)
    codes = random_codes(1, (2, 14, 3))
    mask = padding_mask([14, 6], 14)
    variables = init_model(model, codes, mask)
    fn = loss_fn(model)
    loss, metrics = fn(variables, codes, mask, jax.random.key(5))
    again, _ = fn(variables, codes, mask, jax.random.key(5))
    assert float(loss) == float(again)
    other, _ = fn(variables, codes, mask, jax.random.key(6))
    assert float(other) != float(loss)
    # Padded frames may hold anything, even invalid ids such as a -1 pad value.
    padded = codes.copy()
    padded[1, 6:] = -1
    loss_padded, metrics_padded = fn(variables, padded, mask, jax.random.key(5))
    assert float(loss_padded) == float(loss)
    np.testing.assert_array_equal(metrics_padded["level_targets"], metrics["level_targets"])


def test_callers_arrays_are_not_modified():
    model = SoundStorm(tiny_net(), steps=4, random_token_prob=0.5)
    codes = random_codes(2, (2, 10, 3))
    mask = padding_mask([10, 7], 10)
    before_codes, before_mask = codes.copy(), mask.copy()
    variables = init_model(model, codes, mask)
    loss_fn(model)(variables, codes, mask, jax.random.key(0))
    model.apply(variables, codes, mask, rngs={"masking": jax.random.key(0)})  # eager path too
    np.testing.assert_array_equal(codes, before_codes)
    np.testing.assert_array_equal(mask, before_mask)


def test_grouped_quantizers_train_every_column():
    """Unlike the reference (column q * G only), every column of a grouped RVQ gets gradient."""
    net = tiny_net(num_quantizers=3, grouped_quantizers=2)
    model = SoundStorm(net, steps=4)
    codes = random_codes(3, (4, 10, 6))
    variables = init_model(model, codes)
    grad = jax.jit(jax.grad(lambda v, k: model.apply(v, codes, rngs={"masking": k})[0]))
    total = sum(jnp.abs(nn.unbox(grad(variables, jax.random.key(s)))["params"]["net"]["logits_kernel"]).sum(axis=(1, 2))
                for s in range(6))
    assert np.all(np.asarray(total) > 0), f"untrained columns: {np.flatnonzero(np.asarray(total) == 0)}"


def test_critic_is_scored_only_on_targets():
    """The critic's BCE weights are exactly the generator's targets: never prompt, padding or unmasked."""
    model = SoundStorm(tiny_net(), steps=4, self_token_critic=True)
    codes = random_codes(4, (2, 10, 3))
    mask = padding_mask([10, 5], 10)
    variables = init_model(model, codes, mask)
    run = jax.jit(lambda v, k: model.apply(v, codes, mask, rngs={"masking": k}, mutable="intermediates"))
    for seed in range(3):
        (_, metrics), state = run(variables, jax.random.key(seed))
        draw = state["intermediates"]["draw"][0]
        weights = np.asarray(state["intermediates"]["critic_weights"][0])
        np.testing.assert_array_equal(weights, np.asarray(draw.targets, np.float32))
        assert weights.sum() == float(metrics["num_targets"])
        assert not weights[1, 5:].any(), "critic weight on padding"
        for b in range(2):
            assert not weights[b, :int(draw.prompt_end[b])].any(), "critic weight on the prompt"
        assert 0 < float(metrics["critic_loss"]) < 10


def test_bf16_training_step():
    net = tiny_net(dtype=jnp.bfloat16, conformer=dict(num_residual_streams=4, value_residual=True, depth=1,
                                                      scan_layers=False))  # compiles 3x faster than a scan
    model = SoundStorm(net, steps=4, self_cond=True)
    codes = random_codes(5, (2, 12, 3))
    variables = init_model(model, codes)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(variables)))
    loss, grads = jax.jit(jax.value_and_grad(
        lambda v: model.apply(v, codes, rngs={"masking": jax.random.key(0)})[0]))(variables)
    assert np.isfinite(float(loss))
    assert all(g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(nn.unbox(grads)))


def test_tiny_model_overfits_a_fixed_batch():
    """Loss falls far below the uniform baseline log(K) on a memorisable batch."""
    k = 16
    net = tiny_net(codebook_size=k, num_quantizers=2, conformer=dict(depth=1))
    model = SoundStorm(net, steps=4)
    codes = random_codes(6, (2, 16, 2), k)
    variables = init_model(model, codes)
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(variables)

    @jax.jit
    def step(variables, opt_state, key):
        loss, grads = jax.value_and_grad(lambda v: model.apply(v, codes, rngs={"masking": key})[0])(variables)
        updates, opt_state = optimizer.update(grads, opt_state, variables)
        return optax.apply_updates(variables, updates), opt_state, loss

    losses = []
    for i in range(250):
        variables, opt_state, loss = step(variables, opt_state, jax.random.key(i))
        losses.append(float(loss))
    baseline = np.log(k)
    assert np.mean(losses[:10]) > 0.8 * baseline
    assert np.mean(losses[-25:]) < 0.25 * baseline, f"final loss {np.mean(losses[-25:]):.3f} vs log K {baseline:.3f}"


BAD_INPUTS = [
    (dict(codes=np.full((2, 8, 3), 16)), "codes must lie in \\[0, 16\\)"),
    (dict(codes=np.full((2, 8, 3), -1)), "codes must lie in"),
    (dict(codes=np.zeros((2, 8, 4), np.int32)), "expected 3"),
    (dict(codes=np.zeros((2, 8), np.int32)), "shape \\(batch, frames, levels\\)"),
    (dict(codes=np.zeros((2, 8, 3), np.float32)), "integer"),
    (dict(mask=np.ones((2, 7), bool)), "mask must have shape"),
    (dict(mask=np.ones((2, 8), np.int32)), "mask must be boolean"),
    (dict(mask=padding_mask([8, 0], 8)), "example\\(s\\) \\[1\\]"),
    (dict(semantic_ids=np.array([[1, 2, 99, 3]] * 2)), "semantic_ids must lie in \\[0, 12\\)"),
    (dict(semantic_ids=np.array([1, 2, 3])), "semantic_ids must have shape"),
]


@pytest.mark.parametrize("bad, message", BAD_INPUTS)
def test_bad_input_raises_before_compiling(bad, message):
    net = tiny_net(num_semantic_token_ids=12)
    model = SoundStorm(net, steps=4)
    args = dict(codes=random_codes(0, (2, 8, 3)), mask=np.ones((2, 8), bool), semantic_ids=None)
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        model.init({"params": jax.random.key(0), "masking": jax.random.key(1)}, args["codes"], args["mask"],
                   semantic_ids=args["semantic_ids"])


def test_semantic_ids_without_conditioning_and_bad_model_options():
    model = SoundStorm(tiny_net(), steps=4)
    with pytest.raises(ValueError, match="no semantic conditioning"):
        model.init({"params": jax.random.key(0), "masking": jax.random.key(1)}, random_codes(0, (1, 4, 3)),
                   semantic_ids=np.zeros((1, 2), np.int32))
    with pytest.raises(ValueError, match="schedule"):
        SoundStorm(tiny_net(), schedule="sawtooth")
    with pytest.raises(ValueError, match="steps has 2 entries"):
        SoundStorm(tiny_net(), steps=(4, 1))
    with pytest.raises(ValueError, match="steps must be a positive"):
        SoundStorm(tiny_net(), steps=0)
    with pytest.raises(ValueError, match="no_replace_prob"):
        SoundStorm(tiny_net(), no_replace_prob=1.5)
    assert SoundStorm(tiny_net(), steps=(5, 2, 1)).level_steps == (5, 2, 1)
    assert SoundStorm(tiny_net(), steps=7).level_steps == (7, 1, 1)
