"""Checkpoints of the PyTorch reference (soundstorm-pytorch 0.6.1), both directions.

``config_from_reference`` turns the reference's constructor arguments into
ours, ``import_state_dict`` turns its ``state_dict()`` (``torch.load(path)['model']``
of its saved files) into Flax variables, and ``export_state_dict`` goes back.
Works for a whole ``SoundStorm`` (names under ``net.``) and for a bare
``ConformerWrapper`` (names without prefix)::

    net_kwargs, model_kwargs = config_from_reference(wrapper_kwargs, soundstorm_kwargs)
    model = SoundStorm(ConformerWrapper(**net_kwargs), **model_kwargs)
    variables = import_state_dict(load_reference_checkpoint("soundstorm.pt"), model)

Layouts (reference -> ours; ``d`` dim, ``c`` code columns, ``h`` heads, ``k``
head dim, ``s`` residual streams): a Linear weight ``(out, in)`` is our kernel
``(in, out)``; ``to_q`` ``(h*k, d)`` -> ``query (d, h, k)``; ``to_kv`` ``(2*h*k, d)``
-> ``key``, ``value`` (keys first); ``to_out`` ``(d, h*k)`` -> ``(h, k, d)``; a
pointwise Conv1d ``(out, in, 1)`` -> ``(in, out)``; the depthwise Conv1d
``(i, 1, k)`` -> ``(k, i)``; ``heads.0`` ``(c*d, d)`` (column ``j``'s feature ``e``
at ``j*d + e``) -> ``head_kernel (d, c, d)``; ``to_logits.2`` bias ``(1, 1, c, K)``
-> ``(c, K)``. Per-layer tensors are stacked on our leading layer axis.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from soundstorm_jax.maskgit.soundstorm import SoundStorm
from soundstorm_jax.model.conformer import Conformer
from soundstorm_jax.model.wrapper import ConformerWrapper

# The reference's defaults where they matter to us (ours differ for several).
REFERENCE_CONFORMER_DEFAULTS = dict(dim_head=64, heads=8, ff_mult=4, conv_expansion_factor=2, conv_kernel_size=31,
                                    attn_dropout=0.0, ff_dropout=0.0, conv_dropout=0.0, conv_causal=False,
                                    num_residual_streams=4)
REFERENCE_SOUNDSTORM_DEFAULTS = dict(steps=18, schedule="linear", no_replace_prob=0.15, random_token_prob=0.1,
                                     self_cond=False, self_cond_train_prob=0.75, self_token_critic=False,
                                     critic_loss_weight=1.0)
_WRAPPER_KEYS = {"codebook_size", "num_quantizers", "conformer", "grouped_quantizers"}
_SEMANTIC_KEYS = ("num_semantic_token_ids", "semantic_pad_id", "wav2vec_target_sample_hz",
                  "wav2vec_downsample_factor", "codec_target_sample_hz", "codec_downsample_factor")
# Reference options that configure sampling or data handling, not the network: dropped.
_NOT_MODULE_CONFIG = ("can_mask_prev_unmasked", "pad_id")
_MODULE_OBJECTS = ("soundstream", "spear_tts_text_to_semantic", "wav2vec")
_CRITIC_NET = "token_critic.net."


def config_from_reference(wrapper_kwargs: Mapping[str, Any], soundstorm_kwargs: Mapping[str, Any] | None = None):
    """Reference constructor arguments -> ``(ConformerWrapper kwargs, SoundStorm kwargs or None)``.

    ``wrapper_kwargs`` are ``ConformerWrapper(...)``'s (the Conformer's under
    ``conformer``); ``soundstorm_kwargs`` are ``SoundStorm(...)``'s without ``net``.
    The reference's defaults are filled in explicitly (4 residual streams,
    value-residual mixing, ``schedule='linear'``, ``no_replace_prob=0.15``,
    ``random_token_prob=0.1``), since several of ours differ. Its semantic
    conditioning moves onto our wrapper. ``can_mask_prev_unmasked`` (a sampling
    choice) and ``pad_id`` (ours takes an explicit frame mask) are dropped.
    """
    wrapper = dict(wrapper_kwargs)
    unknown = sorted(set(wrapper) - _WRAPPER_KEYS)
    if unknown:
        raise ValueError(f"unknown ConformerWrapper arguments {unknown}; expected some of {sorted(_WRAPPER_KEYS)}")
    for key in ("codebook_size", "num_quantizers", "conformer"):
        if key not in wrapper:
            raise ValueError(f"ConformerWrapper arguments must give {key!r}")
    if not isinstance(wrapper["conformer"], Mapping):
        raise ValueError("conformer must be the Conformer's keyword arguments (a dict), not a module")
    conformer = dict(wrapper["conformer"])
    if conformer.pop("t5_rel_pos_bias", False):
        raise ValueError("t5_rel_pos_bias=True is not supported: this port has rotary positions only "
                         "(the reference's default, t5_rel_pos_bias=False)")
    conformer.pop("attn_flash", None)  # how the reference computes attention, not what
    allowed = set(REFERENCE_CONFORMER_DEFAULTS) | {"dim", "depth"}
    unknown = sorted(set(conformer) - allowed)
    if unknown:
        raise ValueError(f"unknown Conformer arguments {unknown}; expected some of {sorted(allowed)}")
    for key in ("dim", "depth"):
        if key not in conformer:
            raise ValueError(f"the Conformer arguments must give {key!r}")
    conformer = {**REFERENCE_CONFORMER_DEFAULTS, **conformer}
    # Layers after the first mix their values towards layer 0's (always, in 0.6.1).
    conformer["value_residual"] = int(conformer["depth"]) > 1
    net_kwargs = dict(codebook_size=int(wrapper["codebook_size"]), num_quantizers=int(wrapper["num_quantizers"]),
                      conformer=conformer, grouped_quantizers=int(wrapper.get("grouped_quantizers", 1)))
    if soundstorm_kwargs is None:
        return net_kwargs, None

    options = dict(soundstorm_kwargs)
    for key in _MODULE_OBJECTS:
        if options.pop(key, None) is not None:
            raise ValueError(f"{key} is a module, not configuration: pass its rates instead "
                             "(codec_/wav2vec_target_sample_hz and _downsample_factor)")
    for key in _NOT_MODULE_CONFIG:
        options.pop(key, None)
    semantic = {key: options.pop(key, None) for key in _SEMANTIC_KEYS}
    unknown = sorted(set(options) - set(REFERENCE_SOUNDSTORM_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown SoundStorm arguments {unknown}")
    model_kwargs = {**REFERENCE_SOUNDSTORM_DEFAULTS, **options}

    # The reference conditions exactly when both wav2vec rates are given.
    if semantic["wav2vec_target_sample_hz"] is not None and semantic["wav2vec_downsample_factor"] is not None:
        missing = [k for k in _SEMANTIC_KEYS[2:] + ("num_semantic_token_ids",) if semantic[k] is None]
        if missing:
            raise ValueError(f"semantic conditioning needs {missing} as well")
        semantic_seconds = semantic["wav2vec_downsample_factor"] / semantic["wav2vec_target_sample_hz"]
        acoustic_seconds = semantic["codec_downsample_factor"] / semantic["codec_target_sample_hz"]
        pad_id = -1 if semantic["semantic_pad_id"] is None else semantic["semantic_pad_id"]
        net_kwargs.update(num_semantic_token_ids=int(semantic["num_semantic_token_ids"]), semantic_pad_id=int(pad_id),
                          acoustic_per_semantic=semantic_seconds / acoustic_seconds)
    return net_kwargs, model_kwargs


# ---- the name and layout table ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Rule:
    """One reference tensor and the Flax leaves it becomes.

    ``targets`` are ``(path, layer)`` pairs: a path under ``params`` and, for the
    scanned Conformer layers, the index on the leading layer axis (else None).
    ``to_ours`` maps the reference array to one array per target,
    ``to_reference`` maps them back.
    """

    name: str
    shape: tuple[int, ...]
    targets: tuple[tuple[tuple[str, ...], int | None], ...]
    to_ours: Callable[[np.ndarray], tuple[np.ndarray, ...]]
    to_reference: Callable[..., np.ndarray]


def _same(name, shape, path, layer=None) -> _Rule:
    return _Rule(name, tuple(shape), ((path, layer),), lambda w: (w,), lambda w: w)


def _reshaped(name, shape, path, our_shape, layer=None) -> _Rule:
    return _Rule(name, tuple(shape), ((path, layer),), lambda w: (w.reshape(our_shape),),
                 lambda w: w.reshape(shape))


def _transposed(name, shape, path, layer=None) -> _Rule:
    """A Linear weight ``(out, in)``, or a squeezed pointwise Conv1d weight ``(out, in, 1)``."""
    return _Rule(name, tuple(shape), ((path, layer),), lambda w: (w.reshape(shape[:2]).T,),
                 lambda k: k.T.reshape(shape))


def _linear(prefix, d_in, d_out, path, layer=None, bias=True, conv=False) -> list[_Rule]:
    shape = (d_out, d_in, 1) if conv else (d_out, d_in)
    rules = [_transposed(f"{prefix}.weight", shape, path + ("kernel",), layer)]
    if bias:
        rules.append(_same(f"{prefix}.bias", (d_out,), path + ("bias",), layer))
    return rules


def _layer_norm(prefix, dim, path, layer=None) -> list[_Rule]:
    return [_same(f"{prefix}.weight", (dim,), path + ("scale",), layer),
            _same(f"{prefix}.bias", (dim,), path + ("bias",), layer)]


def _heads_rule(name, d, h, k, path, layer) -> _Rule:
    """``(h*k, d)`` projection to heads -> kernel ``(d, h, k)``."""
    return _Rule(name, (h * k, d), ((path, layer),), lambda w: (w.T.reshape(d, h, k),),
                 lambda q: q.reshape(d, h * k).T)


def _layer_rules(net: ConformerWrapper, i: int) -> list[_Rule]:
    cfg = {**_our_conformer_defaults(), **net.conformer}
    d, h, k = net.dim, int(cfg["heads"]), int(cfg["dim_head"])
    s = int(cfg["num_residual_streams"])
    inner, ff = d * int(cfg["conv_expansion_factor"]), d * int(cfg["ff_mult"])
    kernel_size = int(cfg["conv_kernel_size"])
    p, base = f"conformer.layers.{i}.", ("trunk", "layers")

    def streams(sub: str, branch: list[_Rule]) -> list[_Rule]:
        if s == 1:
            return branch
        hc = base + (f"{sub}_streams",)
        return [_same(p + f"{sub}.static_alpha", (s, s + 1), hc + ("static_alpha",), i),
                _same(p + f"{sub}.dynamic_alpha_fn", (d, s + 1), hc + ("dynamic_alpha",), i),
                _same(p + f"{sub}.dynamic_alpha_scale", (), hc + ("dynamic_alpha_scale",), i),
                _same(p + f"{sub}.static_beta", (s,), hc + ("static_beta",), i),
                _same(p + f"{sub}.dynamic_beta_fn", (d,), hc + ("dynamic_beta",), i),
                _same(p + f"{sub}.dynamic_beta_scale", (), hc + ("dynamic_beta_scale",), i),
                *branch,
                _same(p + f"{sub}.norm.gamma", (d,), hc + ("norm_scale",), i)]

    conv, b = base + ("conv",), p + "conv.branch."
    conv_rules = [
        *_layer_norm(b + "net1.0", d, conv + ("norm",), i),
        *_linear(b + "net1.2", d, 2 * inner, conv + ("pointwise_in",), i, conv=True),
        _Rule(b + "ds_conv.conv.weight", (inner, 1, kernel_size), ((conv + ("depthwise_kernel",), i),),
              lambda w: (w[:, 0, :].T,), lambda w: w.T[:, None, :]),
        _same(b + "ds_conv.conv.bias", (inner,), conv + ("depthwise_bias",), i),
        _reshaped(b + "net2.1.gamma", (1, inner, 1), conv + ("channel_norm", "scale"), (inner,), i),
        *_linear(b + "net2.2", inner, d, conv + ("pointwise_out",), i, conv=True),
    ]

    attn, b = base + ("attn",), p + "attn.branch."
    attn_rules = [
        _heads_rule(b + "fn.to_q.weight", d, h, k, attn + ("query", "kernel"), i),
        _Rule(b + "fn.to_kv.weight", (2 * h * k, d),
              ((attn + ("key", "kernel"), i), (attn + ("value", "kernel"), i)),
              lambda w: (w[:h * k].T.reshape(d, h, k), w[h * k:].T.reshape(d, h, k)),
              lambda key, value: np.concatenate([key.reshape(d, h * k).T, value.reshape(d, h * k).T], axis=0)),
    ]
    if i > 0:
        attn_rules += _linear(b + "fn.to_value_residual_mix.0", d, h, attn + ("value_residual_mix",), i, bias=False)
    attn_rules += [
        _Rule(b + "fn.to_out.weight", (d, h * k), ((attn + ("out", "kernel"), i),),
              lambda w: (w.T.reshape(h, k, d),), lambda o: o.reshape(h * k, d).T),
        _same(b + "fn.to_out.bias", (d,), attn + ("out", "bias"), i),
        *_layer_norm(b + "norm", d, attn + ("norm",), i),
    ]

    def feed_forward(sub: str) -> list[_Rule]:
        path, b = base + (sub,), p + f"{sub}.branch.fn."
        return [*_linear(b + "fn.net.0", d, ff, path + ("wi",), i), *_linear(b + "fn.net.3", ff, d, path + ("wo",), i),
                *_layer_norm(b + "norm", d, path + ("norm",), i)]

    # The reference's state_dict order: conv, attn, ff1, ff2, post_norm.
    return [*streams("conv", conv_rules), *streams("attn", attn_rules), *streams("ff1", feed_forward("ff1")),
            *streams("ff2", feed_forward("ff2")), *_layer_norm(p + "post_norm", d, base + ("post_norm",), i)]


def _our_conformer_defaults() -> dict:
    return {name: field.default for name, field in Conformer.__dataclass_fields__.items()
            if name in REFERENCE_CONFORMER_DEFAULTS or name in ("value_residual", "rotary_theta")}


def _check_representable(net: ConformerWrapper) -> None:
    """Raise if the reference cannot express this network."""
    cfg = {**_our_conformer_defaults(), **net.conformer}
    if int(cfg["depth"]) > 1 and not cfg["value_residual"]:
        raise ValueError("the reference mixes every later layer's values towards the first layer's: "
                         "build the Conformer with value_residual=True (config_from_reference does)")
    if float(cfg["rotary_theta"]) != 10000.0:
        raise ValueError(f"the reference's rotary theta is 10000, this Conformer has {cfg['rotary_theta']}")


def _wrapper_rules(net: ConformerWrapper) -> list[_Rule]:
    d, c, k, g = net.dim, net.num_columns, net.codebook_size, net.grouped_quantizers
    rules = [r for i in range(int(net.conformer["depth"])) for r in _layer_rules(net, i)]
    if g > 1:
        rules += _linear("embedding_proj.0", g * d, d, ("group_proj",))
        rules += _layer_norm("embedding_proj.1", d, ("group_norm",))
    rules += [
        _same("code_embeds.weight", ((k + 1) * c, d), ("code_embed", "embedding")),
        _Rule("heads.0.weight", (c * d, d), ((("head_kernel",), None),),
              lambda w: (w.T.reshape(d, c, d),), lambda w: w.reshape(d, c * d).T),
        _reshaped("heads.0.bias", (c * d,), ("head_bias",), (c, d)),
        *_layer_norm("to_logits.0", d, ("head_norm",)),
        _same("to_logits.2.weight", (c, d, k), ("logits_kernel",)),
        _reshaped("to_logits.2.bias", (1, 1, c, k), ("logits_bias",), (c, k)),
    ]
    return rules


def _rules(model) -> tuple[list[_Rule], list[tuple[str, str]]]:
    """Every reference tensor of ``model`` in state_dict order, and ``(duplicate, original)`` name pairs."""
    if isinstance(model, ConformerWrapper):
        _check_representable(model)
        if model.num_semantic_token_ids is not None:
            raise ValueError("the reference keeps the semantic embedding on SoundStorm (semantic_token_emb): "
                             "convert the whole SoundStorm, or a ConformerWrapper without num_semantic_token_ids")
        return _wrapper_rules(model), []
    if not isinstance(model, SoundStorm):
        raise TypeError(f"expected a SoundStorm or ConformerWrapper module, got {type(model).__name__}")
    net = model.net
    _check_representable(net)
    d = net.dim
    net_rules = [dataclasses.replace(r, name="net." + r.name, targets=tuple((("net",) + p, l) for p, l in r.targets))
                 for r in _wrapper_rules(net)]
    rules = [_same("null_embed", (d,), ("null_embed",))] if model.self_cond else []
    rules += net_rules
    if net.num_semantic_token_ids is not None:
        rules.append(_same("semantic_token_emb.weight", (net.num_semantic_token_ids, d),
                           ("net", "semantic_embed", "embedding")))
    if model.self_cond:
        rules += _linear("to_self_cond", d, d, ("to_self_cond",), bias=False)
    duplicates = []
    if model.self_token_critic:
        # The critic (a LogitHead) registers the same network again: equal tensors under a second name.
        duplicates = [(_CRITIC_NET + r.name[len("net."):], r.name) for r in net_rules]
        rules += _linear("token_critic.to_logits", d, 1, ("critic_head",))
    return rules, duplicates


# ---- import ---------------------------------------------------------------------------------------------


def _to_numpy(value) -> np.ndarray:
    """A numpy array from a numpy/JAX array or a torch tensor (torch is never imported here)."""
    if type(value).__module__.split(".")[0] == "torch":
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16 of its own
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _touch_every_parameter(model: SoundStorm, codes, mask, **semantic):
    """One network pass plus the SoundStorm-level layers: creates every parameter, cheaper to trace than the loss."""
    out = model.net(codes, mask, **semantic)
    if model.self_cond:
        model.self_cond_embedding(None)
    if model.self_token_critic:
        model.critic_head(jnp.zeros((1, model.net.dim), model.net.dtype))
    return out


def _abstract_variables(model):
    """``jax.eval_shape`` of an init: the variables' boxed structure, shapes and dtypes, no compute."""
    net = model.net if isinstance(model, SoundStorm) else model
    codes = jnp.zeros((1, 2, net.num_columns), jnp.int32)
    mask = jnp.ones((1, 2), bool)
    semantic = {} if net.num_semantic_token_ids is None else {"semantic_ids": jnp.zeros((1, 1), jnp.int32)}
    method = _touch_every_parameter if isinstance(model, SoundStorm) else None
    return jax.eval_shape(lambda: model.init(jax.random.key(0), codes, mask, method=method, **semantic))


def _leaf_value(leaf):
    return leaf.unbox() if isinstance(leaf, nn.meta.AxisMetadata) else leaf


def _is_layer_stacked(path: tuple[str, ...]) -> bool:
    return "layers" in path and path.index("layers") > 0 and path[path.index("layers") - 1] == "trunk"


def import_state_dict(state_dict: Mapping[str, Any], model) -> dict:
    """A reference ``state_dict`` -> Flax variables ``{'params': ...}`` for ``model``.

    ``model`` is a :class:`SoundStorm` (names under ``net.``, plus ``null_embed``,
    ``to_self_cond``, ``semantic_token_emb``, ``token_critic`` as configured) or a
    bare :class:`ConformerWrapper`. Values may be numpy arrays or torch tensors.
    The result is boxed like ``model.init``'s (logical axis names kept), in the
    model's ``param_dtype``. Every missing, unexpected or misshaped tensor is
    listed by name in one ``ValueError``; so is a ``token_critic.net.*`` tensor
    that differs from its ``net.*`` original.
    """
    rules, duplicates = _rules(model)
    given = {str(name): value for name, value in state_dict.items()}
    expected = {r.name: r.shape for r in rules} | {dup: None for dup, _ in duplicates}
    problems = []
    missing = [name for name in expected if name not in given]
    unexpected = [name for name in given if name not in expected]
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        hint = ""
        if isinstance(model, ConformerWrapper) and all(n.startswith("net.") for n in unexpected):
            hint = " (a SoundStorm state dict? convert it with a SoundStorm model)"
        problems.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected)}{hint}")
    arrays = {name: _to_numpy(given[name]) for name in expected if name in given}
    misshaped = [f"{r.name} {tuple(arrays[r.name].shape)} (expected {r.shape})" for r in rules
                 if r.name in arrays and tuple(arrays[r.name].shape) != r.shape]
    if misshaped:
        problems.append(f"misshaped tensors ({len(misshaped)}): {', '.join(misshaped)}")
    differing = [dup for dup, original in duplicates if dup in arrays and original in arrays
                 and arrays[dup].shape == arrays[original].shape and not np.array_equal(arrays[dup], arrays[original])]
    if differing:
        problems.append("tensors differing from the shared network they duplicate (net.*): " + ", ".join(differing))
    if problems:
        raise ValueError(f"cannot import the state dict into {type(model).__name__}:\n  " + "\n  ".join(problems))

    abstract = _abstract_variables(model)
    leaves = traverse_util.flatten_dict(abstract["params"])
    values = {path: np.zeros(_leaf_value(leaf).shape, _leaf_value(leaf).dtype) for path, leaf in leaves.items()}
    absent = sorted({"/".join(path) for rule in rules for path, _ in rule.targets if path not in values})
    if absent:
        raise ValueError(f"{type(model).__name__} has no parameters {absent}, which the converter fills: "
                         "its parameter layout changed; update soundstorm_jax/interop/pytorch.py")
    filled = set()
    for rule in rules:
        for (path, layer), array in zip(rule.targets, rule.to_ours(arrays[rule.name])):
            target = values[path] if layer is None else values[path][layer, ...]  # a view, also for scalars
            target[...] = array.astype(target.dtype)
            filled.add((path, layer))
    # Every leaf must come from the checkpoint, except layer 0's value-residual gate,
    # which the scan creates for every layer but layer 0 never uses (left at zero).
    unfilled = []
    for path, value in values.items():
        layers = range(value.shape[0]) if _is_layer_stacked(path) else [None]
        for layer in layers:
            if (path, layer) not in filled and not (path[-2:] == ("value_residual_mix", "kernel") and layer == 0):
                unfilled.append("/".join(path) + ("" if layer is None else f"[layer {layer}]"))
    if unfilled:
        raise ValueError(f"{type(model).__name__} has parameters the reference does not: {', '.join(unfilled)}")

    params = {path: (leaf.replace_boxed(jnp.asarray(values[path])) if isinstance(leaf, nn.meta.AxisMetadata)
                     else jnp.asarray(values[path])) for path, leaf in leaves.items()}
    return {"params": traverse_util.unflatten_dict(params)}


# ---- export ---------------------------------------------------------------------------------------------


def export_state_dict(variables: Mapping[str, Any], model) -> dict[str, np.ndarray]:
    """Flax variables of ``model`` -> the reference's ``state_dict`` (names, order, layouts), numpy arrays.

    Load it with ``module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.
    ``token_critic.net.*`` duplicates are regenerated; layer 0's unused
    value-residual gate is dropped. bfloat16 parameters are widened to float32.
    """
    rules, duplicates = _rules(model)
    params = traverse_util.flatten_dict(nn.unbox(variables)["params"])
    problems, out = [], {}
    for rule in rules:
        parts = []
        for path, layer in rule.targets:
            if path not in params:
                problems.append(f"{'/'.join(path)} missing (for {rule.name})")
                continue
            array = np.asarray(params[path])
            parts.append(array if layer is None else array[layer, ...])
        if len(parts) != len(rule.targets):
            continue
        tensor = np.asarray(rule.to_reference(*parts))
        if tensor.shape != rule.shape:
            problems.append(f"{rule.name} would be {tensor.shape}, expected {rule.shape}")
            continue
        if tensor.dtype.kind == "V" or str(tensor.dtype) == "bfloat16":
            tensor = tensor.astype(np.float32)
        out[rule.name] = np.array(tensor, order="C")  # a C-ordered copy; keeps 0-d tensors 0-d
    if problems:
        raise ValueError(f"variables do not fit {type(model).__name__}:\n  " + "\n  ".join(problems))
    # The reference lists the critic's copy of the network just before the critic's own Linear.
    ordered = {}
    for name, tensor in out.items():
        if name.startswith("token_critic.to_logits.") and duplicates and duplicates[0][0] not in ordered:
            ordered.update({dup: out[original].copy() for dup, original in duplicates})
        ordered[name] = tensor
    return ordered


# ---- files and one-call construction ----------------------------------------------------------------------


def load_reference_checkpoint(path, *, weights_only: bool = True) -> dict[str, np.ndarray]:
    """Read a soundstorm-pytorch checkpoint file: its ``['model']`` state dict as numpy arrays.

    Needs torch (not a dependency of this project). Accepts the trainer's saved
    package (``dict(model=..., optim=..., scheduler=...)``) or a bare state dict.
    """
    try:
        import torch
    except ImportError as error:
        raise ImportError("reading a PyTorch checkpoint needs torch: pip install torch (CPU build is enough), "
                          "or convert the file where torch is installed and save it with numpy.savez") from error
    package = torch.load(str(path), map_location="cpu", weights_only=weights_only)
    state_dict = package["model"] if isinstance(package, Mapping) and "model" in package else package
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path}: expected a state dict or a package with a 'model' state dict, "
                         f"got {type(package).__name__}")
    return {str(name): _to_numpy(value) for name, value in state_dict.items()}


def from_reference(wrapper_kwargs: Mapping[str, Any], soundstorm_kwargs: Mapping[str, Any] | None,
                   state_dict: Mapping[str, Any], **net_overrides):
    """Build our model from the reference's arguments and import its weights: ``(model, variables)``.

    A :class:`SoundStorm` when ``soundstorm_kwargs`` is given (even ``{}``), else a
    bare :class:`ConformerWrapper`. ``net_overrides`` (e.g. ``dtype``) go to the wrapper.
    """
    net_kwargs, model_kwargs = config_from_reference(wrapper_kwargs, soundstorm_kwargs)
    net = ConformerWrapper(**net_kwargs, **net_overrides)
    model = net if model_kwargs is None else SoundStorm(net, **model_kwargs)
    return model, import_state_dict(state_dict, model)
