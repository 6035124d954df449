"""The data layer: TFDS builders (ArrayRecord, no TensorFlow), the grain input
pipeline, and the embedded eSpeak NG speech corpus. See each module's docstring.

  audio_io       read (decode/validate/resample) and write audio files
  audio_folder   AudioFolder: a folder of audio files as a TFDS dataset
  codes_dataset  CodesDataset: codec codes (+ semantic ids) from .npy or an encoder
  pipeline       grain: crops, padding, masks, per-host shards, checkpointable iterator
  espeak_ffi     eSpeak NG via ctypes (thread-safe; deterministic batch worker)
  grammar        a small English grammar for the corpus's sentences
  phonemes       phoneme inventory, per-frame ids, the phonemiser
  espeak_corpus  the embedded corpus (tiny / small), prepared through AudioFolder
"""
from soundstorm_jax.data.audio_folder import AudioFolder, find_audio_files, open_prepared, prepare_audio_folder
from soundstorm_jax.data.audio_io import AudioError, SampleRateError, read_audio, resample
from soundstorm_jax.data.codes_dataset import CodesDataset, CodesError, prepare_codes_dataset, validate_codes
from soundstorm_jax.data.espeak_corpus import (SIZES, CorpusSize, build_corpus_folder, default_cache_dir,
                                               prepare_corpus, speakers, utterances)
from soundstorm_jax.data.espeak_ffi import is_available as espeak_is_available
from soundstorm_jax.data.espeak_ffi import synthesize
from soundstorm_jax.data.grammar import sentences
from soundstorm_jax.data.phonemes import (PAD_ID, PHONEMES, SILENCE_ID, UNKNOWN_ID, VOCAB_SIZE, TimedPhonemes,
                                          check_speakable, phoneme_id, phonemize)
from soundstorm_jax.data.pipeline import (PipelineConfig, config_from_dict, crop_example, host_rows,
                                          make_eval_dataset, make_eval_iterator, make_train_dataset,
                                          make_train_iterator, semantic_frames, semantic_ratio)
