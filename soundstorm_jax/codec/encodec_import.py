"""Import the PyTorch ``encodec`` package's EnCodec weights into ``EnCodec`` variables.

``import_encodec_state_dict(state_dict, model)`` takes the ``state_dict()`` of an
``encodec.EncodecModel`` (PyTorch tensors or NumPy arrays), or the path of a
checkpoint file (a ``torch.save``-d state dict such as ``encodec_24khz-d7cc33bc.th``,
read with ``torch.load``; or an ``.npz`` of arrays under the same names, optionally
prefixed ``param/``), and returns ``{'params': ...}`` for ``model`` (an ``EnCodec``).
torch is imported only to read a PyTorch file or when tensors are passed.

Name mapping (``encodec``'s ``nn.Sequential`` indices; ``I`` = index): the encoder is
``conv_in, [res x n_residual_layers, ELU, down] per ratio, LSTM, ELU, conv_out``; the
decoder ``conv_in, LSTM, [ELU, up, res x n_residual_layers] per ratio, ELU, conv_out``.

* ``{encoder,decoder}.model.I.conv.conv.{weight_g,weight_v,bias}`` (a convolution;
  residual blocks add ``.block.{1,3}`` and ``.shortcut`` before ``.conv.conv``),
* ``decoder.model.I.convtr.convtr.{weight_g,weight_v,bias}`` (transposed),
* ``{encoder,decoder}.model.I.lstm.{weight_ih,weight_hh,bias_ih,bias_hh}_lL``,
* ``quantizer.vq.layers.Q._codebook.embed`` (``inited``, ``cluster_size`` and
  ``embed_avg`` are training statistics and are ignored).

Weight norm (``w = g * v / ||v||``, norm over every axis but the first) is folded
into plain kernels; ``weight_g``/``weight_v`` (``torch.nn.utils.weight_norm``),
``parametrizations.weight.original0``/``original1`` (its parametrization version) and
an unnormalised ``weight`` are all accepted. Every missing, unexpected or misshaped
tensor is listed by name in one ``ValueError``.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from soundstorm_jax import paths
from soundstorm_jax.codec.encodec import EnCodec, EnCodecCodec

_IGNORED_CODEBOOK_STATS = ('inited', 'cluster_size', 'embed_avg')
_WEIGHT_FORMS = (('weight_g', 'weight_v'), ('parametrizations.weight.original0', 'parametrizations.weight.original1'))


@dataclass(frozen=True)
class _Entry:
    kind: str  # 'conv', 'convtr', 'lstm' or 'codebook'
    torch_prefix: str
    flax_path: tuple[str, ...]


def _seanet_entries(model: EnCodec, side: str) -> list[_Entry]:
    """Layers of the encoder or decoder in PyTorch's ``nn.Sequential`` order (index = position)."""
    def conv(index: int, path: tuple[str, ...], kind: str = 'conv', inner: str = '') -> _Entry:
        name = 'convtr.convtr' if kind == 'convtr' else 'conv.conv'
        return _Entry(kind, f'{side}.model.{index}.{inner}{name}', (side,) + path)

    def resnet(index: int, name: str) -> list[_Entry]:
        block = [conv(index, (name, f'conv{i}'), inner=f'block.{2 * i + 1}.') for i in range(2)]
        return block + ([] if model.true_skip else [conv(index, (name, 'shortcut'), inner='shortcut.')])

    entries, index = [conv(0, ('conv_in',))], 1
    stages = list(reversed(tuple(model.ratios))) if side == 'encoder' else list(model.ratios)
    if side == 'decoder' and model.lstm_layers:
        entries.append(_Entry('lstm', f'decoder.model.{index}.lstm', ('decoder', 'lstm')))
        index += 1
    for i, _ in enumerate(stages):
        if side == 'decoder':
            entries.append(conv(index + 1, (f'block{i}_up',), kind='convtr'))  # after the ELU at `index`
            index += 2
        for j in range(model.n_residual_layers):
            entries += resnet(index, f'block{i}_res{j}')
            index += 1
        if side == 'encoder':
            entries.append(conv(index + 1, (f'block{i}_down',)))
            index += 2
    if side == 'encoder' and model.lstm_layers:
        entries.append(_Entry('lstm', f'encoder.model.{index}.lstm', ('encoder', 'lstm')))
        index += 1
    entries.append(conv(index + 1, ('conv_out',)))  # after the final ELU
    return entries


def encodec_layout(model: EnCodec) -> list[_Entry]:
    """Every weight-bearing layer of ``model`` with its PyTorch name prefix and its path in ``params``."""
    books = [_Entry('codebook', f'quantizer.vq.layers.{q}._codebook', ('codebooks',))
             for q in range(model.max_quantizers)]
    return _seanet_entries(model, 'encoder') + _seanet_entries(model, 'decoder') + books


def param_shapes(model: EnCodec) -> dict:
    """``params`` shapes of ``model`` (no computation: ``jax.eval_shape`` of ``init``)."""
    audio = jax.ShapeDtypeStruct((1, model.hop_length), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), audio)['params']


# ---- reading state dicts --------------------------------------------------------------------------------------
def _to_numpy(value) -> np.ndarray:
    if type(value).__module__.startswith('torch'):  # a tensor: converted without this module importing torch
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _load_file(path: str) -> Mapping[str, Any]:
    if not epath.Path(path).is_file():
        raise FileNotFoundError(f"EnCodec checkpoint {path!r} does not exist")
    if path.endswith('.npz'):
        return paths.read_npz_state_dict(path)
    try:
        import torch
    except ImportError as err:
        raise ImportError(f"reading the PyTorch checkpoint {path!r} needs torch (pip install torch); or pass "
                          f"the state dict as NumPy arrays, or save it as .npz "
                          f"(np.savez(f, **{{k: v.numpy() for k, v in state_dict.items()}}))") from err
    loaded = torch.load(paths.readable(path), map_location='cpu', weights_only=True)
    if isinstance(loaded, Mapping) and not all(hasattr(v, 'shape') for v in loaded.values()):
        for key in ('best_state', 'state_dict', 'model'):
            if isinstance(loaded.get(key), Mapping):
                return loaded[key]
        raise ValueError(f"{path!r} holds a dict with keys {sorted(loaded)[:20]} and none of them is a state "
                         f"dict ('best_state', 'state_dict' or 'model')")
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path!r} holds a {type(loaded).__name__}, expected a state dict (name -> tensor)")
    return loaded


def _as_arrays(state_dict) -> dict[str, np.ndarray]:
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = _load_file(os.fspath(state_dict))
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of names to tensors/arrays or a checkpoint path, "
                        f"got {type(state_dict).__name__}")
    return {str(k): _to_numpy(v) for k, v in state_dict.items()}


# ---- the import -------------------------------------------------------------------------------------------------
def _fold_weight_norm(g: np.ndarray, v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float64)
    norm = np.sqrt(np.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))
    return (g.astype(np.float64) * v / norm).astype(np.float32)


class _Reader:
    """Takes tensors by name, recording missing and misshaped ones; remembers what was used."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays, self.used, self.missing, self.misshaped = arrays, set(), [], []

    def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        if name not in self.arrays:
            self.missing.append(f"{name} {shape}")
            return None
        self.used.add(name)
        value = self.arrays[name]
        if tuple(value.shape) != tuple(shape):
            self.misshaped.append(f"{name}: got {tuple(value.shape)}, expected {tuple(shape)}")
            return None
        return value.astype(np.float32)

    def conv_weight(self, prefix: str, shape: tuple[int, ...]) -> np.ndarray | None:
        """The (folded) weight of a convolution, whichever form the state dict stores it in."""
        g_shape = (shape[0],) + (1,) * (len(shape) - 1)
        for g_name, v_name in _WEIGHT_FORMS:
            if f'{prefix}.{g_name}' in self.arrays or f'{prefix}.{v_name}' in self.arrays:
                g, v = self.take(f'{prefix}.{g_name}', g_shape), self.take(f'{prefix}.{v_name}', shape)
                return None if g is None or v is None else _fold_weight_norm(g, v)
        if f'{prefix}.weight' in self.arrays:
            return self.take(f'{prefix}.weight', shape)
        self.missing.append(f"{prefix}.weight_g {g_shape} and {prefix}.weight_v {shape} (or {prefix}.weight)")
        return None


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def import_encodec_state_dict(state_dict, model: EnCodec | None = None) -> dict:
    """PyTorch ``encodec`` state dict (mapping or checkpoint path) -> ``{'params': ...}`` for ``model``.

    ``model`` defaults to ``EnCodec()`` (the 24 kHz model). Raises one ``ValueError`` naming every missing,
    unexpected and misshaped tensor; warns when a codebook level was never initialised (``inited == 0``).
    """
    model = EnCodec() if model is None else model
    arrays = _as_arrays(state_dict)
    shapes = param_shapes(model)
    reader, params = _Reader(arrays), {}
    books, uninitialised = [None] * model.max_quantizers, []
    for entry in encodec_layout(model):
        p = entry.torch_prefix
        if entry.kind == 'codebook':
            q = int(p.split('.')[3])
            books[q] = reader.take(f'{p}.embed', shapes['codebooks'].shape[1:])
            reader.used.update(f'{p}.{stat}' for stat in _IGNORED_CODEBOOK_STATS if f'{p}.{stat}' in arrays)
            if f'{p}.inited' in arrays and not np.all(arrays[f'{p}.inited']):
                uninitialised.append(q)
            continue
        target = shapes
        for key in entry.flax_path:
            target = target[key]
        if entry.kind == 'lstm':
            for name, layer in target.items():
                i = int(name[len('layer'):])
                c_in, four_h = layer['kernel_ih'].shape
                w_ih = reader.take(f'{p}.weight_ih_l{i}', (four_h, c_in))
                w_hh = reader.take(f'{p}.weight_hh_l{i}', (four_h, four_h // 4))
                b_ih, b_hh = reader.take(f'{p}.bias_ih_l{i}', (four_h,)), reader.take(f'{p}.bias_hh_l{i}', (four_h,))
                if all(w is not None for w in (w_ih, w_hh, b_ih, b_hh)):
                    _set(params, entry.flax_path + (name,), {'kernel_ih': w_ih.T, 'kernel_hh': w_hh.T,
                                                             'bias': b_ih + b_hh})
            continue
        k, c_in, c_out = target['kernel'].shape
        torch_shape = (c_out, c_in, k) if entry.kind == 'conv' else (c_in, c_out, k)
        weight = reader.conv_weight(p, torch_shape)
        bias = reader.take(f'{p}.bias', (c_out,))
        if weight is not None and bias is not None:
            kernel = weight.transpose(2, 1, 0) if entry.kind == 'conv' else weight.transpose(2, 0, 1)
            _set(params, entry.flax_path, {'kernel': kernel, 'bias': bias})
    extra = sorted(set(arrays) - reader.used)
    problems = [(f"{len(reader.missing)} missing", reader.missing),
                (f"{len(extra)} unexpected", [f"{n} {tuple(arrays[n].shape)}" for n in extra]),
                (f"{len(reader.misshaped)} misshaped", reader.misshaped)]
    if any(names for _, names in problems):
        report = "; ".join(f"{title}: " + ", ".join(names) for title, names in problems if names)
        raise ValueError(f"the state dict does not fit EnCodec(hop_length={model.hop_length}, "
                         f"dimension={model.dimension}, n_filters={model.n_filters}, "
                         f"max_quantizers={model.max_quantizers}): {report}")
    if uninitialised:
        warnings.warn(f"codebook levels {uninitialised} have inited == 0: never initialised (an untrained model?), "
                      f"so their codes are meaningless", stacklevel=2)
    params['codebooks'] = np.stack(books)
    return {'params': jax.tree.map(jnp.asarray, params)}


def load_encodec(state_dict, model: EnCodec | None = None, bandwidth: float | None = None,
                 compiler_options: dict | None = None) -> EnCodecCodec:
    """A ready ``EnCodecCodec`` from a checkpoint path or state dict (``model`` defaults to 24 kHz EnCodec)."""
    model = EnCodec() if model is None else model
    if bandwidth is not None:
        model = model.clone(bandwidth=bandwidth)
    return EnCodecCodec(model, import_encodec_state_dict(state_dict, model), compiler_options)
