#!/usr/bin/env python
"""Numerical fixtures made from the real PyTorch reference (soundstorm-pytorch 0.6.1).

This script imports the installed reference; no reference code lives in this repository.
It builds small reference models with fixed seeds, perturbs every parameter away from its
initial value (so identity-like initialisations -- LayerNorm gains of 1, zero biases,
hyper-connection alphas/betas -- cannot hide a mapping mistake), runs the network forward
in eval mode in float32 on fixed inputs (codes with [MASK] ids at mixed positions, a frame
mask with trailing padding on example 1), and writes one ``.npz`` per configuration to
``tests/fixtures/`` (see ``tests/fixtures/README.md`` for every key).

Installing the reference (it is NOT a dependency of this project; keep its virtual
environment outside the repository). ``tools/reference_env.sh`` does all of this:

    python3.11 -m venv "$VENV"
    # empty stand-in distribution named `fairseq` (the real one does not build on 3.11),
    # so that audiolm-pytorch's dependency on it resolves:
    pip install "$VENV/fairseq_stub"          # fairseq/__init__.py empty, version 0.12.2
    pip install torch==2.9.1 'torchaudio==2.9.*' soundstorm-pytorch==0.6.1
    pip uninstall -y fairseq
    # the empty package then serves `import fairseq` through PYTHONPATH:
    PYTHONPATH="$VENV/fairseq_stub" "$VENV/bin/python" tools/make_reference_fixtures.py

Options: ``--out DIR`` (default: ``tests/fixtures`` under the repository root found from
this file), ``--only NAME`` (repeatable) to regenerate some fixtures, ``--seed``.

Determinism: every RNG is seeded per configuration (torch, python ``random`` -- the
hyper-connections package picks each layer's initial stream with ``random.randrange`` --
and numpy). Inputs are drawn from a numpy Generator seeded independently of torch.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures"

BASE_SEED = 20240607
BATCH = 2
FRAMES = 24
PAD_FRAMES = 5          # trailing frames of example 1 that the frame mask excludes
MASK_FRACTION = 0.25    # fraction of code positions replaced by [MASK] at random

# Constructor arguments per fixture. `wrapper` are ConformerWrapper kwargs (with the
# Conformer kwargs under `conformer`), `soundstorm` are SoundStorm kwargs (net omitted).
CONFIGS: dict[str, dict] = {
    # (a) README config shape, reduced: reference defaults everywhere except sizes
    # (4 hyper-connection residual streams, value residual on layers >= 1, ff_mult 4,
    # conv kernel 31, conv expansion 2, dim_head 64).
    "a_readme_reduced": dict(
        wrapper=dict(codebook_size=64, num_quantizers=4,
                     conformer=dict(dim=64, depth=2, heads=2)),
        soundstorm=dict(steps=18, schedule="cosine"),
    ),
    # (b) heads / dim_head changed, plus an even conv kernel (asymmetric "same" padding
    # (3, 2)), ff_mult 2 and conv expansion 1.
    "b_heads_dimhead": dict(
        wrapper=dict(codebook_size=48, num_quantizers=3,
                     conformer=dict(dim=64, depth=2, heads=4, dim_head=32, ff_mult=2,
                                    conv_kernel_size=6, conv_expansion_factor=1)),
        soundstorm=dict(steps=18, schedule="cosine"),
    ),
    # (c) plain residuals (hyper-connections disabled), non power-of-two width.
    "c_plain_residual": dict(
        wrapper=dict(codebook_size=40, num_quantizers=4,
                     conformer=dict(dim=80, depth=2, heads=3, dim_head=32, ff_mult=2,
                                    conv_kernel_size=5, num_residual_streams=1)),
        soundstorm=dict(steps=18, schedule="cosine"),
    ),
    # (d) grouped residual VQ: 2 groups x 3 levels = 6 code columns per frame.
    "d_grouped": dict(
        wrapper=dict(codebook_size=32, num_quantizers=3, grouped_quantizers=2,
                     conformer=dict(dim=64, depth=2, heads=4, dim_head=16, ff_mult=2,
                                    conv_kernel_size=7)),
        soundstorm=dict(steps=18, schedule="cosine"),
    ),
    # (e) semantic-token conditioning: semantic 16000/640 = 25 Hz, codec 24000/480 = 50 Hz,
    # so the reference upsamples the conditioning x2 (13 semantic tokens -> 26 frames,
    # then cropped to the 24 acoustic frames).
    "e_semantic_cond": dict(
        wrapper=dict(codebook_size=32, num_quantizers=4,
                     conformer=dict(dim=64, depth=2, heads=4, dim_head=16, ff_mult=2,
                                    conv_kernel_size=5)),
        soundstorm=dict(steps=18, schedule="cosine", num_semantic_token_ids=50,
                        semantic_pad_id=-1,
                        wav2vec_target_sample_hz=16000, wav2vec_downsample_factor=640,
                        codec_target_sample_hz=24000, codec_downsample_factor=480),
    ),
    # (f) self token-critic head and self-conditioning.
    "f_critic_selfcond": dict(
        wrapper=dict(codebook_size=32, num_quantizers=3,
                     conformer=dict(dim=64, depth=2, heads=2, dim_head=16, ff_mult=2,
                                    conv_kernel_size=5, conv_expansion_factor=1)),
        soundstorm=dict(steps=18, schedule="cosine", self_token_critic=True, self_cond=True),
    ),
}

SEMANTIC_LEN = 13   # for (e); example 1 has its last 2 semantic ids set to the pad id -1
SEMANTIC_PAD = 2


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def perturb_parameters(model, seed: int) -> dict:
    """Add seeded Gaussian noise to every parameter (in place); returns a description.

    Weight matrices (ndim >= 2, not constant) get noise with 0.1 x their own std; every
    other tensor -- LayerNorm gains/biases, Linear biases, ChanLayerNorm gamma,
    hyper-connection RMSNorm gammas, static/dynamic alphas and betas and their scales --
    and constant-initialised matrices get absolute noise of std 0.1 (so, e.g., a dynamic
    alpha scale of 0.01 becomes O(0.1) and the input-dependent mixing really matters).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    seen = set()
    with torch.no_grad():
        for name, p in model.named_parameters():   # shared parameters are listed once
            if id(p) in seen:
                continue
            seen.add(id(p))
            flat_std = float(p.detach().float().std()) if p.numel() > 1 else 0.0
            if p.ndim >= 2 and flat_std > 0 and "static_alpha" not in name:
                sigma = 0.1 * flat_std
            else:
                sigma = 0.1
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * sigma)
    return dict(
        rule="p += N(0, sigma) with sigma = 0.1*std(p) for non-constant matrices "
             "(except static_alpha), else sigma = 0.1",
        seed=seed,
    )


def make_inputs(rng: np.random.Generator, codebook_size: int, num_cols: int):
    codes = rng.integers(0, codebook_size, size=(BATCH, FRAMES, num_cols), dtype=np.int64)
    # [MASK] at random positions ...
    codes[rng.random(codes.shape) < MASK_FRACTION] = codebook_size
    # ... plus a training-like pattern on example 0: frames >= 16 fully masked above column 1
    codes[0, 16:, 2:] = codebook_size
    # ... and one frame fully masked in example 1 (inside the valid region)
    codes[1, 3, :] = codebook_size
    mask = np.ones((BATCH, FRAMES), dtype=bool)
    mask[1, FRAMES - PAD_FRAMES:] = False
    return codes, mask


def run_config(name: str, spec: dict, seed: int) -> dict[str, np.ndarray]:
    import torch
    from einops import rearrange
    from soundstorm_pytorch import ConformerWrapper, SoundStorm

    seed_everything(seed)
    net = ConformerWrapper(**json.loads(json.dumps(spec["wrapper"])))
    model = SoundStorm(net, **spec["soundstorm"])
    perturb_info = perturb_parameters(model, seed + 1)
    model.eval()

    K = spec["wrapper"]["codebook_size"]
    gq = net.num_effective_quantizers
    d = net.dim

    rng = np.random.default_rng(seed + 2)
    codes_np, mask_np = make_inputs(rng, K, gq)
    codes = torch.from_numpy(codes_np)
    mask = torch.from_numpy(mask_np)
    flat = rearrange(codes, "b n q -> b (n q)")

    out: dict[str, np.ndarray] = {}

    # hooks capturing conformer intermediates
    captured: dict[str, torch.Tensor] = {}

    def trunk_pre_hook(module, args, kwargs):
        captured["trunk_in"] = args[0].detach().clone()

    def trunk_hook(module, args, kwargs, output):
        captured["trunk_out"] = output.detach().clone()

    def block_hook(i):
        def hook(module, args, output):
            x, values = output
            captured[f"block_out_{i}"] = x.detach().clone()
            if i == 0:
                captured["value_residual"] = values.detach().clone()
        return hook

    handles = [
        net.conformer.register_forward_pre_hook(trunk_pre_hook, with_kwargs=True),
        net.conformer.register_forward_hook(trunk_hook, with_kwargs=True),
    ]
    handles += [blk.register_forward_hook(block_hook(i)) for i, blk in enumerate(net.conformer.layers)]

    with torch.no_grad():
        cond = None
        if model.should_condition:
            sem = rng.integers(0, model.num_semantic_token_ids, size=(BATCH, SEMANTIC_LEN), dtype=np.int64)
            sem[1, SEMANTIC_LEN - SEMANTIC_PAD:] = model.semantic_pad_id
            sem_t = torch.from_numpy(sem)
            cond = model.maybe_get_condition(sem_t, length=FRAMES)
            cond_full = model.maybe_get_condition(sem_t)   # no length: what generate() uses
            out["semantic_ids"] = sem
            out["cond"] = cond.numpy()
            out["cond_uncropped"] = cond_full.numpy()

        captured.clear()
        logits = net(flat, mask=mask, cond=cond)
        out["logits"] = rearrange(logits, "b (n q) l -> b n q l", q=gq).numpy()
        out["trunk_in"] = captured["trunk_in"].numpy()
        out["trunk_out"] = captured["trunk_out"].numpy()
        for i in range(len(net.conformer.layers)):
            x = captured[f"block_out_{i}"]   # (b * s, n, d), streams minor
            out[f"block_out_{i}"] = rearrange(x, "(b s) n d -> b s n d", b=BATCH).numpy()
        out["value_residual"] = captured["value_residual"].numpy()   # (b, h, n, dh)

        embeds = net(flat, mask=mask, cond=cond, return_embeddings=True)
        out["embeddings"] = rearrange(embeds, "b (n q) d -> b n q d", q=gq).numpy()

        logits2, embeds2 = net(flat, mask=mask, cond=cond, return_logits_and_embeddings=True)
        assert torch.equal(logits2, logits) and torch.equal(embeds2, embeds)

        if model.token_critic is not None:
            # LogitHead calls the shared net WITHOUT the frame mask (and without cond)
            critic = model.token_critic(flat)
            out["critic_logits"] = rearrange(critic, "b (n q) 1 -> b n q", q=gq).numpy()

        if model.self_cond:
            null_se = model.to_self_cond(model.null_embed)                  # (d,)
            out["self_cond_null_sum_embeds"] = null_se.numpy()
            lg = net(flat, mask=mask, cond=cond, sum_embeds=null_se)
            out["self_cond_null_logits"] = rearrange(lg, "b (n q) l -> b n q l", q=gq).numpy()

            se = model.to_self_cond(embeds)                                 # (b, n*q, d)
            out["self_cond_sum_embeds"] = rearrange(se, "b (n q) d -> b n q d", q=gq).numpy()
            lg, em = net(flat, mask=mask, cond=cond, sum_embeds=se, return_logits_and_embeddings=True)
            out["self_cond_logits"] = rearrange(lg, "b (n q) l -> b n q l", q=gq).numpy()
            out["self_cond_embeddings"] = rearrange(em, "b (n q) d -> b n q d", q=gq).numpy()

    for h in handles:
        h.remove()

    out["codes"] = codes_np
    out["mask"] = mask_np

    state = model.state_dict()
    for k, v in state.items():
        out[f"param/{k}"] = v.detach().cpu().numpy()

    config = dict(
        conformer_wrapper=spec["wrapper"],
        soundstorm=spec["soundstorm"],
        mask_id=K,
        num_effective_quantizers=gq,
        dim=d,
        batch=BATCH,
        frames=FRAMES,
    )
    versions = dict(
        torch=_version("torch"),
        soundstorm_pytorch=_version("soundstorm-pytorch"),
        hyper_connections=_version("hyper-connections"),
        einops=_version("einops"),
        numpy=np.__version__,
        python=platform.python_version(),
        seed=seed,
        perturbation=perturb_info,
        dtype="float32",
        mode="eval, torch.no_grad, CPU",
    )
    out["config_json"] = np.array(json.dumps(config, sort_keys=True))
    out["versions_json"] = np.array(json.dumps(versions, sort_keys=True))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--only", action="append", choices=sorted(CONFIGS))
    parser.add_argument("--seed", type=int, default=BASE_SEED)
    args = parser.parse_args(argv)

    import torch

    torch.set_default_dtype(torch.float32)
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.only or list(CONFIGS)
    for idx, name in enumerate(CONFIGS):
        if name not in names:
            continue
        arrays = run_config(name, CONFIGS[name], args.seed + 1000 * idx)
        path = args.out / f"{name}.npz"
        np.savez_compressed(path, **arrays)
        n_params = sum(v.size for k, v in arrays.items() if k.startswith("param/"))
        print(f"{path.name}: {len(arrays)} arrays, {n_params} parameter values, "
              f"{path.stat().st_size / 1e6:.2f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
