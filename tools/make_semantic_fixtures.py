#!/usr/bin/env python
"""HuBERT / wav2vec 2.0 parity fixtures and a scikit-learn k-means fixture, made with the real packages.

Run with a Python that has torch, transformers, safetensors and scikit-learn (a virtual
environment OUTSIDE the repository), from the repository root:

    python -m venv ../semenv && ../semenv/bin/pip install /opt/wheels/torch-*.whl transformers safetensors \\
        numpy scikit-learn
    ../semenv/bin/python tools/make_semantic_fixtures.py [--out tests/fixtures]

It writes into ``--out``:

``hubert_base_tiny.npz`` / ``wav2vec2_large_tiny.npz`` -- a small ``HubertModel`` in the base
  layout (group-norm feature extractor, post-norm layers, no conv bias) and a small
  ``Wav2Vec2Model`` in the large layout (LayerNorm after every conv, conv biases, pre-norm
  "stable layer norm" layers with a final LayerNorm, an odd positional kernel), random weights
  perturbed as below. Keys:
    ``config``         JSON: the transformers config (``to_dict()``), package versions, the seed and
                       ``padded_batch_max_diff`` (see below);
    ``param/<name>``   every tensor of ``model.state_dict()`` under its transformers name;
    ``audio``          (3, 1600) float32; rows 1 and 2 are clips of ``lengths`` samples followed by
                       noise (the padding must not matter);
    ``lengths``        (3,) int32 valid samples per row (1600, 1123, 640);
    ``frame_lengths``  (3,) int32 valid frames per row (transformers' ``_get_feat_extract_output_lengths``);
    ``hidden``         (L+1, 3, frames, d) float32: ``hidden_states`` (``output_hidden_states=True``) of each
                       clip run ALONE at its own length (no padding, no mask), zero past ``frame_lengths``;
                       in transformers 5 the last one is the top layer's output WITHOUT the pre-norm
                       layout's final LayerNorm (``tie_last_hidden_states=False``);
    ``last_hidden_state`` (3, frames, d) float32: the same runs' ``last_hidden_state`` (with it).
  ``padded_batch_max_diff``: the largest difference on valid frames between those and transformers' run
  of the zero-padded batch with ``attention_mask``. About 1e-6 for the LayerNorm model; large for the
  GroupNorm model, whose first normalisation takes statistics over the padding (which is why the
  fixture holds each clip's unpadded features: that is what our padded batches reproduce).
``hubert_base_tiny.safetensors`` -- the same HuBERT state dict written by the ``safetensors``
  package, to test our torch-free reader on a real file.
``kmeans_sklearn.npz`` -- ``sklearn.cluster.KMeans(16)`` fitted on 24-dim float32 Gaussian blobs:
  ``centers`` (16, 24) float32 (``cluster_centers_``), ``features`` (1000, 24) float32 new points
  (blobs plus uniform points between them, so many lie near a boundary), ``ids`` (1000,) int32
  from ``predict``, ``inertia`` and ``config`` (versions).
``kmeans_sklearn.joblib`` -- that estimator saved with ``joblib.dump`` (what audiolm-pytorch loads).

Perturbation: transformers initialises LayerNorm/GroupNorm gains to 1 and biases to 0, which would
hide a swapped or unmapped norm; every gain gets 1 + N(0, 0.2), every bias N(0, 0.2), the positional
conv's weight-norm gain a factor U(0.75, 1.25), other weights 1 + N(0, 0.1) times themselves.
``build_reference``, ``perturb``, ``make_audio`` and ``reference_hidden_states`` also serve the live
test in ``tests/semantic/test_semantic_parity.py``.
"""
from __future__ import annotations

import argparse
import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

SAMPLES, LENGTHS = 1600, (1600, 1123, 640)
TINY = {
    # family, transformers config fields
    "hubert_base_tiny": ("hubert", dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        conv_dim=(32, 32, 24), conv_kernel=(10, 3, 2), conv_stride=(5, 2, 2), conv_bias=False,
        feat_extract_norm="group", do_stable_layer_norm=False, feat_proj_layer_norm=True,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)),
    "wav2vec2_large_tiny": ("wav2vec2", dict(
        hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
        conv_dim=(24, 32, 40), conv_kernel=(10, 3, 2), conv_stride=(5, 2, 2), conv_bias=True,
        feat_extract_norm="layer", do_stable_layer_norm=True,
        num_conv_pos_embeddings=15, num_conv_pos_embedding_groups=3)),
}
SEEDS = {"hubert_base_tiny": 1501, "wav2vec2_large_tiny": 1502}


def build_reference(family: str, fields: dict, seed: int):
    """A transformers ``HubertModel``/``Wav2Vec2Model`` with random weights, eval mode, float32."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2Model
    torch.manual_seed(seed)
    config_cls, model_cls = (HubertConfig, HubertModel) if family == "hubert" else (Wav2Vec2Config, Wav2Vec2Model)
    config = config_cls(**{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()},
                        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                        layerdrop=0.0, attn_implementation="eager")
    return model_cls(config).eval()


@torch.no_grad()
def perturb(model, seed: int) -> None:
    """Make every parameter matter (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if name.endswith(("weight_g", "original0")):
            p.mul_(0.75 + 0.5 * torch.rand(p.shape, generator=gen))
        elif "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.2 * noise)
        elif name.endswith("bias") or p.ndim == 1:
            p.copy_(0.2 * noise)
        else:
            p.mul_(1 + 0.1 * noise)


def make_audio(seed: int, batch: int = 3, samples: int = SAMPLES, lengths=LENGTHS) -> tuple[np.ndarray, np.ndarray]:
    """(batch, samples) float32 clips (tones + noise) padded with louder noise; lengths (batch,) int32."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    rows = []
    for b in range(batch):
        clip = 0.4 * np.sin(2 * np.pi * 150 * (b + 1) * t) + 0.2 * rng.normal(size=samples)
        clip[lengths[b]:] = rng.normal(0, 0.8, samples - lengths[b])  # padding: must never change valid frames
        rows.append(clip)
    return np.stack(rows).astype(np.float32), np.asarray(lengths, np.int32)


@torch.no_grad()
def reference_hidden_states(model, audio: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every clip alone, unpadded: hidden states (L+2, b, frames, d) zero past each clip's frames (the L+1
    ``hidden_states`` then ``last_hidden_state``); frame lengths (b,)."""
    frames = model._get_feat_extract_output_lengths(torch.from_numpy(lengths.astype(np.int64))).numpy()
    total = int(model._get_feat_extract_output_lengths(torch.tensor(audio.shape[1])))
    out = np.zeros((model.config.num_hidden_layers + 2, audio.shape[0], total, model.config.hidden_size), np.float32)
    for b, length in enumerate(lengths):
        result = model(torch.from_numpy(audio[b:b + 1, :length]), output_hidden_states=True)
        out[:, b, :frames[b]] = torch.stack(result.hidden_states + (result.last_hidden_state,))[:, 0].numpy()
    return out, frames.astype(np.int32)


@torch.no_grad()
def padded_batch_hidden_states(model, audio: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """transformers' own batched run: zero padding and ``attention_mask``."""
    padded = audio.copy()
    mask = np.arange(audio.shape[1])[None] < lengths[:, None]
    padded[~mask] = 0
    result = model(torch.from_numpy(padded), attention_mask=torch.from_numpy(mask.astype(np.int64)),
                   output_hidden_states=True)
    return torch.stack(result.hidden_states + (result.last_hidden_state,)).numpy()


def write_encoder_fixture(name: str, out: Path, versions: dict) -> dict[str, np.ndarray]:
    family, fields = TINY[name]
    seed = SEEDS[name]
    model = build_reference(family, fields, seed)
    perturb(model, seed)
    audio, lengths = make_audio(seed + 2)
    hidden, frames = reference_hidden_states(model, audio, lengths)
    batched = padded_batch_hidden_states(model, audio, lengths)
    valid = np.arange(hidden.shape[2])[None, :] < frames[:, None]
    diff = float(np.abs(batched - hidden)[:, valid].max())
    config = {"transformers_config": model.config.to_dict(), "family": family, "seed": seed,
              "padded_batch_max_diff": diff, **versions}
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    arrays = {f"param/{k}": v for k, v in state.items()}
    arrays.update(config=np.array(json.dumps(config, default=str)), audio=audio, lengths=lengths,
                  frame_lengths=frames, hidden=hidden[:-1], last_hidden_state=hidden[-1])
    np.savez_compressed(out / f"{name}.npz", **arrays)
    size = (out / f"{name}.npz").stat().st_size
    print(f"wrote {out / name}.npz ({size / 1e6:.2f} MB): {len(state)} tensors, hidden {hidden.shape}, "
          f"transformers' padded batch differs by {diff:.2e} on valid frames")
    return state


def write_kmeans_fixture(out: Path, versions: dict, seed: int = 7) -> None:
    import joblib
    from sklearn.cluster import KMeans
    rng = np.random.default_rng(seed)
    dim, clusters = 24, 16
    means = rng.normal(0, 3, (clusters, dim))
    train = (means[rng.integers(0, clusters, 3000)] + rng.normal(0, 1.0, (3000, dim))).astype(np.float32)
    kmeans = KMeans(n_clusters=clusters, n_init=3, random_state=seed).fit(train)
    blobs = means[rng.integers(0, clusters, 600)] + rng.normal(0, 1.2, (600, dim))
    between = rng.uniform(-6, 6, (400, dim))
    features = np.concatenate([blobs, between]).astype(np.float32)
    ids = kmeans.predict(features).astype(np.int32)
    np.savez_compressed(out / "kmeans_sklearn.npz", centers=kmeans.cluster_centers_, features=features, ids=ids,
                        inertia=np.float64(kmeans.inertia_),
                        config=np.array(json.dumps({"n_clusters": clusters, "dim": dim, "seed": seed, **versions})))
    joblib.dump(kmeans, out / "kmeans_sklearn.joblib")
    print(f"wrote kmeans_sklearn.npz and .joblib: centres {kmeans.cluster_centers_.shape} "
          f"{kmeans.cluster_centers_.dtype}, {len(np.unique(ids))} distinct ids on {len(ids)} points")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests" / "fixtures")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    versions = {p: version(p) for p in ("torch", "transformers", "safetensors", "scikit-learn", "numpy")}
    for name in TINY:
        state = write_encoder_fixture(name, args.out, versions)
        if name == "hubert_base_tiny":
            from safetensors.numpy import save_file
            save_file(state, str(args.out / f"{name}.safetensors"))
    write_kmeans_fixture(args.out, versions)


if __name__ == "__main__":
    main()
