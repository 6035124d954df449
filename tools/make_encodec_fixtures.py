#!/usr/bin/env python
"""EnCodec parity fixtures made with the PyTorch ``encodec`` package (0.1.1); no encodec code lives here.

Run with a Python that has torch and encodec installed (a virtual environment OUTSIDE the
repository; ``pip install torch==2.9.1 encodec==0.1.1``), from the repository root:

    "$VENV/bin/python" tools/make_encodec_fixtures.py [--out tests/fixtures] [--seed 0]

It writes two files:

``encodec_24khz.npz`` -- parity data for a SMALL model with the 24 kHz model's structure.
  The real model's weights are 60 MB of float32, too big to commit, so the script builds an
  ``EncodecModel`` from the package's own classes with the 24 kHz settings (ratios 8,5,4,2 so
  hop 320 and 75 frames/s, causal, weight norm, reflect padding, 2-layer LSTMs, 1x1-conv skips,
  1024-code Euclidean codebooks) but narrower layers (``SMALL`` below: 4 base filters, 32-dim
  latents, 8 levels for target bandwidths 1.5/3/6 kbps). Keys:
    ``config``            JSON: the EnCodec fields of that model, and the package versions;
    ``param/<name>``      every tensor of its ``state_dict()`` (float32 as stored);
    ``audio``             (2, 7000) float32 input at 24 kHz (tones, a chirp, noise), not a multiple of the hop;
    ``codes/<kbps>``      (2, 22, levels) int32 from ``model.encode`` at 1.5 and 6 kbps (frames x levels);
    ``decoded/<kbps>``    (2, 7040) float32 from ``model.decode`` of those codes (untrimmed);
    ``short/audio``, ``short/codes``, ``short/decoded``: the same at 6 kbps for a (1, 500) input (2 frames,
                          so reflect padding meets inputs shorter than the pad).
``encodec_24khz_layout.json`` -- names and shapes (no values) of every tensor in the state dict of
  the real ``EncodecModel.encodec_model_24khz(pretrained=False)``, to check that ``EnCodec()``'s
  defaults have exactly its layout.

Parameters are perturbed so that nothing trivial hides a mapping mistake: every weight-norm gain
``weight_g`` (the norm of each output channel's kernel) is drawn from [0.75, 1.25] -- PyTorch's
initial ``|v|`` is about 0.58, which shrinks the signal at every layer until the decoder's output
is its biases alone and hardly depends on the codes; unit-size kernels keep activations near
unit scale, so every layer shows in the output. LSTM weights are doubled for the same reason, and
the codebooks -- all zero in an untrained model, whose k-means initialisation runs only on the
first training batch -- get Gaussian codes with the per-dimension mean and spread of each level's
residual on the input (so frames pick different codes), with ``inited`` set to 1.
``make_audio``, ``build_reference``, ``perturb`` and ``reference_outputs`` also serve the live test
in ``tests/codec/test_encodec.py``.
"""
from __future__ import annotations

import argparse
import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

SAMPLE_RATE = 24000
BANDWIDTHS = (1.5, 6.0)
SHORT_SAMPLES = 500  # 2 frames: the bottleneck convolutions then pad more than the input is long
LSTM_SCALE = 2.0  # PyTorch's LSTM init is weak next to the skip connection; stronger weights make it matter
SMALL = dict(dimension=32, n_filters=4, target_bandwidths=(1.5, 3.0, 6.0))


def make_audio(seed: int = 0, batch: int = 2, samples: int = 7000) -> np.ndarray:
    """Deterministic (batch, samples) float32: tones + a chirp + noise, peak below 1."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / SAMPLE_RATE
    out = []
    for b in range(batch):
        f0 = 110.0 * (b + 2)
        tones = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.15 * np.sin(2 * np.pi * 3.1 * f0 * t + b)
        chirp = 0.1 * np.sin(2 * np.pi * (200 + 4000 * t) * t)
        burst = (np.abs(t - 0.1 * (b + 1)) < 0.03) * rng.normal(0, 0.2, samples)
        out.append(tones + chirp + burst + rng.normal(0, 0.02, samples))
    return np.clip(np.stack(out), -0.99, 0.99).astype(np.float32)


def build_reference(small: bool, seed: int = 0):
    """The package's 24 kHz model (``small=False``) or the small one of the same structure, eval mode."""
    from encodec import EncodecModel
    from encodec.modules import SEANetDecoder, SEANetEncoder
    from encodec.quantization import ResidualVectorQuantizer
    torch.manual_seed(seed)
    if not small:
        return EncodecModel.encodec_model_24khz(pretrained=False)
    seanet = dict(channels=1, dimension=SMALL['dimension'], n_filters=SMALL['n_filters'], norm='weight_norm',
                  causal=True, pad_mode='reflect', ratios=[8, 5, 4, 2], lstm=2, true_skip=False)
    encoder, decoder = SEANetEncoder(**seanet), SEANetDecoder(**seanet)
    levels = int(1000 * SMALL['target_bandwidths'][-1] // (np.ceil(SAMPLE_RATE / encoder.hop_length) * 10))
    quantizer = ResidualVectorQuantizer(dimension=SMALL['dimension'], n_q=levels, bins=1024)
    model = EncodecModel(encoder, decoder, quantizer, list(SMALL['target_bandwidths']), SAMPLE_RATE, 1)
    return model.eval()


@torch.no_grad()
def perturb(model, audio: np.ndarray, seed: int = 0) -> None:
    """Random weight-norm gains; codebooks at each level's residual scale on ``audio`` (see module doc)."""
    gen = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():
        if name.endswith('weight_g'):
            p.copy_(0.75 + 0.5 * torch.rand(p.shape, generator=gen))
        elif '.lstm.' in name:
            p.mul_(LSTM_SCALE)
    residual = model.encoder(torch.from_numpy(audio)[:, None])  # (b, d, n)
    for layer in model.quantizer.vq.layers:
        book = layer._codebook
        mean, std = residual.mean(dim=(0, 2)), residual.std(dim=(0, 2))  # per latent dimension
        book.embed.copy_(mean + torch.randn(book.embed.shape, generator=gen) * std)
        book.embed_avg.copy_(book.embed)
        book.inited.fill_(1.0)
        residual = residual - layer.decode(layer.encode(residual))


@torch.no_grad()
def reference_outputs(model, audio: np.ndarray, bandwidth: float) -> tuple[np.ndarray, np.ndarray]:
    """codes (b, frames, levels) int32 and decoded audio (b, frames * hop) float32 at ``bandwidth``."""
    model.set_target_bandwidth(bandwidth)
    frames = model.encode(torch.from_numpy(audio)[:, None])
    codes = frames[0][0].permute(0, 2, 1).numpy().astype(np.int32)
    return codes, model.decode(frames)[:, 0].numpy().astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, default=Path(__file__).resolve().parent.parent / 'tests' / 'fixtures')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    versions = {'torch': version('torch'), 'encodec': version('encodec')}

    real = build_reference(small=False, seed=args.seed)
    layout = {'model': 'EncodecModel.encodec_model_24khz(pretrained=False)', **versions,
              'state_dict': {k: list(v.shape) for k, v in real.state_dict().items()}}
    lines = [f'  {json.dumps(k)}: {json.dumps(v)}' for k, v in layout.pop('state_dict').items()]
    header = json.dumps(layout)[:-1]  # one tensor per line below
    (args.out / 'encodec_24khz_layout.json').write_text(f'{header}, "state_dict": {{\n' + ',\n'.join(lines) + '\n}}\n')

    audio = make_audio(args.seed)
    model = build_reference(small=True, seed=args.seed)
    perturb(model, audio, args.seed)
    arrays = {f'param/{k}': v.numpy() for k, v in model.state_dict().items()}
    config = {**SMALL, 'target_bandwidths': list(SMALL['target_bandwidths']), 'bandwidths': list(BANDWIDTHS),
              **versions}
    arrays.update(config=np.array(json.dumps(config)), audio=audio)
    for bw in BANDWIDTHS:
        arrays[f'codes/{bw}'], arrays[f'decoded/{bw}'] = reference_outputs(model, audio, bw)
    short = make_audio(args.seed + 1, batch=1, samples=SHORT_SAMPLES)
    arrays['short/audio'] = short
    arrays['short/codes'], arrays['short/decoded'] = reference_outputs(model, short, BANDWIDTHS[-1])
    np.savez_compressed(args.out / 'encodec_24khz.npz', **arrays)
    size = (args.out / 'encodec_24khz.npz').stat().st_size
    print(f"wrote {args.out / 'encodec_24khz.npz'} ({size / 1e6:.2f} MB) and encodec_24khz_layout.json "
          f"({len(lines)} tensors)")


if __name__ == '__main__':
    main()
