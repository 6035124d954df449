"""The run's data: a prepared `CodesDataset` -> grain iterators -> global batches, and evaluation."""
from __future__ import annotations

import glob
import os
from typing import Any, Optional

import jax
import numpy as np
import tensorflow_datasets as tfds

from soundstorm_jax.data import audio_folder, make_eval_iterator, make_train_iterator
from soundstorm_jax.training import factory, step as step_lib
from soundstorm_jax.training.experiment import Experiment


def open_codes_dataset(data_dir: Optional[str], model_config: Any) -> tfds.core.DatasetBuilder:
    """The prepared codes dataset under `data_dir`, checked against `config.model`.

    `data_dir` is what was passed to `prepare_codes_dataset` (holding
    `codes_dataset/<version>/`) or the version folder itself.
    """
    if not data_dir:
        raise ValueError("config.data.dir is not set: pass --config.data.dir=DIR, a folder prepared with "
                         "soundstorm_jax.data.prepare_codes_dataset(DIR, npy_dir=...) (codec codes as .npy)")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"config.data.dir={data_dir!r} does not exist or is not a directory")
    if os.path.exists(os.path.join(data_dir, "dataset_info.json")):
        version_dir = data_dir
    else:
        found = sorted(glob.glob(os.path.join(data_dir, "codes_dataset", "*", "dataset_info.json")))
        if not found:
            raise FileNotFoundError(f"config.data.dir={data_dir!r} holds no prepared codes dataset "
                                    f"(expected codes_dataset/<version>/dataset_info.json); prepare one with "
                                    f"soundstorm_jax.data.prepare_codes_dataset")
        version_dir = os.path.dirname(found[-1])
    builder = audio_folder.open_prepared(version_dir)
    meta = dict(builder.info.metadata or {})
    levels = int(model_config.num_quantizers) * int(model_config.get("grouped_quantizers", 1))
    if "codebook_size" in meta and int(meta["codebook_size"]) > int(model_config.codebook_size):
        raise ValueError(f"the codes dataset in {version_dir!r} has codebook_size {meta['codebook_size']} but "
                         f"config.model.codebook_size is {model_config.codebook_size}")
    if "num_levels" in meta and int(meta["num_levels"]) != levels:
        raise ValueError(f"the codes dataset in {version_dir!r} has {meta['num_levels']} levels but the model "
                         f"expects {levels} (num_quantizers * grouped_quantizers)")
    return builder


def train_iterator(ex: Experiment, builder: tfds.core.DatasetBuilder):
    """This host's checkpointable iterator over the training split."""
    train_config, _ = factory.pipeline_configs(ex.config.data)
    source = builder.as_data_source(ex.config.data.train_split)
    if len(source) == 0:
        raise ValueError(f"split {ex.config.data.train_split!r} of {builder.data_dir!r} is empty")
    return make_train_iterator(train_config, source, seed=int(ex.config.seed))


def device_batch(ex: Experiment, batch: dict) -> dict[str, jax.Array]:
    """A host's pipeline batch -> checked, global model inputs."""
    inputs = step_lib.host_batch(batch, ex.model)
    inputs = {k: v for k, v in inputs.items() if k in ex.batch_keys}
    return step_lib.global_batch(inputs, step_lib.batch_shardings(ex.mesh, ex.rules, ex.batch_keys)[ex.batch_keys[0]])


def evaluate(ex: Experiment, params: Any, builder: tfds.core.DatasetBuilder, *,
             max_batches: Optional[int] = None) -> Optional[dict[str, Any]]:
    """Target-weighted metrics over the evaluation split (None if the split is missing).

    Evaluation draws its masks from a fixed key, so successive evaluations of
    a run are comparable.
    """
    split = ex.config.data.eval_split
    if not split or split not in builder.info.splits:
        return None
    _, eval_config = factory.pipeline_configs(ex.config.data, eval_batch_size=ex.config.data.get("eval_batch_size"))
    rng = jax.random.PRNGKey(int(ex.config.seed) + 1)
    parts = []
    for i, batch in enumerate(make_eval_iterator(eval_config, builder.as_data_source(split))):
        if max_batches is not None and i >= max_batches:
            break
        metrics = jax.device_get(ex.eval_step(params, device_batch(ex, batch), jax.random.fold_in(rng, i)))
        if metrics["num_targets"] > 0:
            parts.append({k: np.asarray(v, np.float64) for k, v in metrics.items()})
    if not parts:
        return None
    return step_lib.combine_metrics(parts)
