"""Weights shipped inside the package: the demo's codec and SoundStorm, trained longer on the embedded corpus.

    python tools/train_demo_weights.py --codec-steps N --soundstorm-steps M   # how they were made

`soundstorm demo` starts from them (no training: a couple of minutes on a laptop
CPU); `soundstorm demo --from-scratch` trains both within its budget instead.
The folder `demo/` is an ordinary export (`soundstorm export`: the SoundStorm's
EMA parameters, its config, and the codec's export in `demo/codec/`), so every
command that takes a workdir takes it too; `demo/card.json` says how the weights
were trained (command, corpus, seed, the training voices, steps, machine, wall
time) and what that run's demo measured, which the tests reproduce.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
from typing import Optional

CARD_FILE = "card.json"
DEMO_FOLDER = "demo"


@dataclasses.dataclass(frozen=True)
class ShippedWeights:
    """A shipped export: `path` (SoundStorm, with its codec in `codec_path`) and its `card`."""
    path: str
    card: dict

    @property
    def codec_path(self) -> str:
        return os.path.join(self.path, "codec")

    @property
    def training_speakers(self) -> tuple[str, ...]:
        """The voices SoundStorm trained on."""
        return tuple(self.card["training_speakers"])

    @property
    def codec_training_speakers(self) -> tuple[str, ...]:
        """The voices the codec trained on (SoundStorm's, unless the card names more)."""
        return tuple(self.card.get("codec_training_speakers", self.training_speakers))

    @property
    def heard_speakers(self) -> tuple[str, ...]:
        """Every voice either model trained on (the codec may have heard more voices than SoundStorm)."""
        return tuple(sorted(set(self.training_speakers) | set(self.codec_training_speakers)))


def demo_weights() -> Optional[ShippedWeights]:
    """The demo's shipped weights, or None when this installation has none."""
    folder = importlib.resources.files(__name__) / DEMO_FOLDER
    card = folder / CARD_FILE
    if not card.is_file():
        return None
    return ShippedWeights(os.fspath(folder), json.loads(card.read_text(encoding="utf-8")))


__all__ = ["CARD_FILE", "ShippedWeights", "demo_weights"]
