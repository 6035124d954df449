"""The grain pipeline: crops, masks, padding, semantic alignment, sharding, state."""
import json
import math
from fractions import Fraction

import ml_collections
import numpy as np
import pytest

from soundstorm_jax.data import audio_folder, codes_dataset, pipeline

Q = 3


def timeline_records(lengths, semantic_per_frame=Fraction(1, 2)):
    """Records whose codes say where they are: codes[t] = (t, record, t % 7).

    Semantic token j is the number j; it covers frames [j / ratio, (j+1) / ratio).
    """
    records = []
    for r, n in enumerate(lengths):
        codes = np.stack([np.arange(n), np.full(n, r), np.arange(n) % 7], axis=1).astype(np.int16)
        records.append({"codes": codes, "id": f"r{r}".encode(),
                        "semantic_ids": np.arange(math.ceil(n * semantic_per_frame), dtype=np.int32)})
    return records


LENGTHS = [5, 40, 17, 64, 23, 90, 31, 12, 48, 70, 8, 55, 36]
CONFIG = pipeline.PipelineConfig(batch_size=4, max_frames=20, frame_rate=50.0,
                                 semantic_rate=25.0, code_pad_value=-1, semantic_pad_value=-2)


def check_batch(batch, records, config):
    """Every example is an aligned window of its record, padded and masked as documented."""
    ratio = pipeline.semantic_ratio(config)
    s_frames = pipeline.semantic_frames(config)
    b = config.batch_size
    assert batch["codes"].shape == (b, config.max_frames, Q) and batch["codes"].dtype == np.int32
    assert batch["mask"].shape == (b, config.max_frames) and batch["mask"].dtype == bool
    assert batch["semantic_ids"].shape == (b, s_frames)
    for codes, mask, sem, sem_mask, index in zip(batch["codes"], batch["mask"],
                                                 batch["semantic_ids"], batch["semantic_mask"],
                                                 batch["index"]):
        source = records[index]["codes"]
        valid = int(mask.sum())
        assert valid == min(len(source), config.max_frames)
        assert mask[:valid].all()  # Valid frames come first, then padding.
        start = int(codes[0, 0])
        np.testing.assert_array_equal(codes[:valid], source[start:start + valid])
        assert (codes[valid:] == config.code_pad_value).all()
        assert start % ratio.denominator == 0
        # Semantic token k is the one sounding at the window's frame k / ratio.
        n_sem = int(sem_mask.sum())
        assert n_sem == min(len(records[index]["semantic_ids"]) - start * ratio,
                            math.ceil((start + valid) * ratio) - start * ratio)
        assert sem_mask[:n_sem].all() and (sem[n_sem:] == config.semantic_pad_value).all()
        for k in range(n_sem):
            frame = math.ceil(k / ratio)
            if frame < valid:
                assert sem[k] == int(codes[frame, 0] * ratio)


def test_batches_are_aligned_windows_with_masks_and_padding():
    records = timeline_records(LENGTHS)
    it = pipeline.make_train_iterator(CONFIG, records, seed=0, process_index=0, process_count=1)
    for _ in range(8):
        check_batch(next(it), records, CONFIG)


def test_alignment_for_a_two_thirds_ratio():
    # EnCodec-like 75 Hz codes with 50 Hz semantic tokens: 2 tokens per 3 frames.
    config = pipeline.PipelineConfig(batch_size=3, max_frames=16, frame_rate=75.0,
                                     semantic_rate=50.0)
    assert pipeline.semantic_ratio(config) == Fraction(2, 3)
    assert pipeline.semantic_frames(config) == 11
    records = timeline_records(LENGTHS, Fraction(2, 3))
    it = pipeline.make_train_iterator(config, records, seed=5, process_index=0, process_count=1)
    starts = set()
    for _ in range(10):
        batch = next(it)
        check_batch(batch, records, config)
        starts |= set(batch["codes"][:, 0, 0].tolist())
    assert len(starts) > 3  # The crops really are random.


def test_crops_depend_only_on_seed_record_and_epoch():
    records = timeline_records(LENGTHS)

    def crops(seed, process_index=0, process_count=1, epochs=1):
        config = pipeline.PipelineConfig(**{**CONFIG.__dict__, "num_epochs": epochs,
                                            "batch_size": 2 * process_count})
        it = pipeline.make_train_iterator(config, records, seed=seed, process_index=process_index,
                                          process_count=process_count)
        seen = {}
        for position, batch in enumerate(it):
            for index, first in zip(batch["index"], batch["codes"][:, 0, 0]):
                seen.setdefault(int(index), []).append(int(first))
        return seen

    one_host = crops(seed=7)
    assert crops(seed=7) == one_host
    assert crops(seed=8) != one_host
    # The same record gets the same window whichever host reads it.
    compared = 0
    for host in range(2):
        for index, starts in crops(seed=7, process_index=host, process_count=2).items():
            if index in one_host:  # An odd record out is dropped by the last batch.
                assert starts == one_host[index]
                compared += 1
    assert compared >= 10
    # A new epoch draws new windows (records much longer than the crop).
    two_epochs = crops(seed=7, epochs=2)
    long = [i for i, n in enumerate(LENGTHS) if n >= 60]
    assert any(two_epochs[i][0] != two_epochs[i][1] for i in long)


def test_epochs_are_reshuffled_and_cover_the_shard():
    records = timeline_records(LENGTHS[:12])
    config = pipeline.PipelineConfig(batch_size=4, max_frames=8, num_epochs=2)
    batches = list(pipeline.make_train_iterator(config, records, seed=1, process_index=0,
                                                process_count=1))
    order = np.concatenate([b["index"] for b in batches])
    assert len(order) == 24
    assert sorted(order[:12]) == list(range(12)) == sorted(order[12:])
    assert list(order[:12]) != list(order[12:]) and list(order[:12]) != list(range(12))


@pytest.mark.parametrize("count", [1, 2, 3, 6])
def test_host_rows_split_a_batch_into_equal_contiguous_shares(count):
    shares = [pipeline.host_rows(6, i, count) for i in range(count)]
    assert [i for s in shares for i in s] == list(range(6))
    assert len({len(s) for s in shares}) == 1


def test_hosts_read_disjoint_parts_of_the_same_global_batches(tmp_path):
    """End to end: .npy codes -> TFDS ArrayRecord -> grain, as 1 host and as 3 simulated hosts: each host
    reads only its rows, and the hosts' rows stacked are exactly the one-host batches (so a run's losses do
    not depend on the number of hosts)."""
    npy = tmp_path / "npy"
    npy.mkdir()
    records = timeline_records(LENGTHS)
    for r in records:
        np.save(npy / f"{r['id'].decode()}.npy", r["codes"])
        np.save(npy / f"{r['id'].decode()}.semantic.npy", r["semantic_ids"])
    builder = codes_dataset.prepare_codes_dataset(str(tmp_path / "tfds"), npy_dir=str(npy),
                                                  codebook_size=1024, validation_fraction=0.0)
    source = builder.as_data_source("train")
    stored = [{"codes": s["codes"], "semantic_ids": s["semantic_ids"]} for s in source]
    config = pipeline.PipelineConfig(**{**CONFIG.__dict__, "batch_size": 6, "num_epochs": 2})
    host_config = pipeline.PipelineConfig(**{**config.__dict__, "batch_size": 2})
    one_host = list(pipeline.make_train_iterator(config, source, seed=3, process_index=0, process_count=1))
    per_host = [list(pipeline.make_train_iterator(config, source, seed=3, process_index=host, process_count=3))
                for host in range(3)]
    assert len(one_host) == 2 * len(source) // 6
    for step, whole in enumerate(one_host):
        parts = [batches[step] for batches in per_host]
        for part in parts:
            assert part["codes"].shape[0] == 2  # Each host makes 1/3 of the global batch.
            check_batch(part, stored, host_config)
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
        indices = [set(p["index"].tolist()) for p in parts]
        if step < len(source) // 6:  # (A batch across an epoch boundary may hold a record twice.)
            assert not (indices[0] & indices[1] or indices[0] & indices[2] or indices[1] & indices[2])
    # Explicit rows (what the trainer derives from the batch sharding) are the same thing.
    rows = list(pipeline.make_train_iterator(config, source, seed=3, rows=range(2, 4)))
    np.testing.assert_array_equal(rows[0]["codes"], per_host[1][0]["codes"])


def test_audio_crops_from_a_wav_folder(audio_dir, tmp_path):
    builder = audio_folder.prepare_audio_folder(audio_dir, str(tmp_path / "tfds"),
                                                validation_fraction=0.0)
    source = builder.as_data_source("train")
    config = pipeline.PipelineConfig(batch_size=2, max_frames=6000, feature="audio",
                                     frame_rate=16000.0)
    it = pipeline.make_train_iterator(config, source, seed=0, process_index=0, process_count=1)
    for _ in range(6):
        batch = next(it)
        assert batch["audio"].shape == (2, 6000) and batch["audio"].dtype == np.float32
        for audio, mask, index in zip(batch["audio"], batch["mask"], batch["index"]):
            wave = source[int(index)]["audio"].astype(np.float32) / 32767.0
            valid = int(mask.sum())
            assert valid == min(len(wave), 6000) and mask[:valid].all()
            # The window is a contiguous piece of the record.
            starts = [s for s in range(len(wave) - valid + 1)
                      if np.array_equal(wave[s:s + valid], audio[:valid])]
            assert starts
            assert (audio[valid:] == 0).all()


def test_iterator_state_restores_exactly_the_same_batches():
    records = timeline_records(LENGTHS)
    first = pipeline.make_train_iterator(CONFIG, records, seed=11, process_index=0,
                                         process_count=1)
    for _ in range(5):  # Past the first epoch (13 records, 3 batches of 4).
        next(first)
    state = json.loads(json.dumps(first.get_state()))  # As a checkpoint would store it.
    expected = [next(first) for _ in range(6)]
    resumed = pipeline.make_train_iterator(CONFIG, records, seed=11, process_index=0,
                                           process_count=1)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert want.keys() == got.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_eval_iterator_reads_everything_once_and_pads_with_masked_examples():
    records = timeline_records(LENGTHS)
    config = pipeline.PipelineConfig(batch_size=6, max_frames=20, semantic_rate=25.0,
                                     shuffle=False, random_crop=False)
    seen = []
    for host in range(3):
        batches = list(pipeline.make_eval_iterator(config, records, process_index=host,
                                                   process_count=3))
        assert len(batches) == 3  # ceil(13 / 6) global batches, 2 rows each, on every host.
        for batch in batches:
            for codes, mask, sem_mask, index in zip(batch["codes"], batch["mask"],
                                                    batch["semantic_mask"], batch["index"]):
                if index < 0:
                    assert not mask.any() and not sem_mask.any() and (codes == 0).all()
                else:
                    assert codes[0, 0] == 0  # Evaluation takes the first window.
                    seen.append(int(index))
    assert sorted(seen) == list(range(len(records)))


def test_missing_semantic_ids_are_reported():
    records = timeline_records([30, 30])
    records[1]["semantic_ids"] = np.zeros((0,), np.int32)
    config = pipeline.PipelineConfig(batch_size=2, max_frames=8, semantic_rate=25.0,
                                     shuffle=False)
    with pytest.raises(ValueError, match=r"record 1 \(b'r1'\) has no semantic_ids"):
        next(pipeline.make_train_iterator(config, records, seed=0, process_index=0,
                                          process_count=1))


def test_config_errors():
    records = timeline_records(LENGTHS)
    with pytest.raises(ValueError, match="batch_size 4 is not divisible by process_count 3"):
        pipeline.make_train_iterator(CONFIG, records, seed=0, process_index=0, process_count=3)
    with pytest.raises(ValueError, match="fewer than the batch of 16"):
        pipeline.make_train_iterator(
            pipeline.PipelineConfig(batch_size=16, max_frames=8), records, seed=0,
            process_index=0, process_count=1)
    with pytest.raises(ValueError, match="feature must be"):
        pipeline.PipelineConfig(batch_size=2, max_frames=8, feature="spectrogram")
    cfg = ml_collections.ConfigDict({"batch_size": 8, "max_frames": 100, "semantic_rate": 25.0})
    assert pipeline.config_from_dict(cfg).semantic_rate == 25.0
    cfg.max_frame = 3
    with pytest.raises(ValueError, match=r"unknown data pipeline option\(s\) \['max_frame'\]"):
        pipeline.config_from_dict(cfg)
