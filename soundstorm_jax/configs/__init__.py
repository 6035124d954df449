"""The packaged training configs: `soundstorm train --config NAME` (or `python train.py --config configs/NAME.py`).

Each module's `get_config()` returns an `ml_collections.ConfigDict`; `common.py` and `codec_common.py` hold the
defaults of the two model kinds, which are also the schema the strict reader checks every config against
(`soundstorm_jax/training/config.py`).
"""
