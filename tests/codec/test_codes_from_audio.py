"""The codes dataset step: a prepared audio dataset encoded by a real codec, batched, equals encoding each clip."""
import jax
import numpy as np
import soundfile

from soundstorm_jax.codec import SoundStream, SoundStreamCodec
from soundstorm_jax.data import prepare_audio_folder, prepare_codes_dataset

RATE = 400  # a tiny codec: hop 4, so clips of a few hundred samples are dozens of frames


def test_encoding_a_prepared_audio_dataset_matches_clip_by_clip(tmp_path):
    rng = np.random.default_rng(0)
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    lengths = [93, 160, 57, 201, 128, 77]
    for i, n in enumerate(lengths):
        t = np.arange(n) / RATE
        clip = 0.3 * np.sin(2 * np.pi * (20 + 7 * i) * t) + 0.05 * rng.normal(size=n)
        soundfile.write(wavs / f"clip{i}.wav", clip.astype(np.float32), RATE, subtype="PCM_16")
    audio = prepare_audio_folder(str(wavs), str(tmp_path / "audio"), sample_rate=RATE, validation_fraction=0.0)

    model = SoundStream(codebook_size=16, rq_num_quantizers=3, strides=(2, 2), channels=4, dim=16,
                        target_sample_hz=RATE)  # causal: padding after a clip cannot change its codes
    variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, 64), np.float32))
    codec = SoundStreamCodec(model, variables)
    codes = prepare_codes_dataset(str(tmp_path / "codes"), audio_source=audio, encode_fn=codec.encode,
                                  samples_per_frame=model.hop_length, encode_batch_size=4, codebook_size=16,
                                  num_levels=3)

    source = audio.as_data_source("train")
    clips = {source[i]["id"].decode(): source[i]["audio"] for i in range(len(source))}
    encoded = codes.as_data_source("train")
    assert len(encoded) == len(lengths)
    for i in range(len(encoded)):
        record = encoded[i]
        clip = clips[record["id"].decode()].astype(np.float32) / 32768
        alone = np.asarray(codec.encode(clip[None]))[0]
        assert record["codes"].shape == (-(-len(clip) // model.hop_length), 3)
        np.testing.assert_array_equal(record["codes"], alone)
