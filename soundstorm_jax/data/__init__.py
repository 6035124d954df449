"""The data layer: TFDS builders (no TensorFlow), the grain pipeline, and the
embedded eSpeak NG speech corpus. See each module's docstring."""
from soundstorm_jax.data.audio_folder import AudioFolder, find_audio_files, open_prepared, prepare_audio_folder
from soundstorm_jax.data.audio_io import AudioError, load_audio, resample
from soundstorm_jax.data.codes_dataset import CodesDataset, CodesError, prepare_codes_dataset, validate_codes
from soundstorm_jax.data.pipeline import (PipelineConfig, config_from_dict, crop_example, make_eval_dataset,
                                          make_eval_iterator, make_train_dataset, make_train_iterator,
                                          semantic_frames, semantic_ratio, shard_range)
from soundstorm_jax.data.espeak_corpus import (SIZES, CorpusSize, build_corpus_folder, default_cache_dir,
                                               prepare_corpus, speakers, utterances)
from soundstorm_jax.data.grammar import sentences
from soundstorm_jax.data.phonemes import (PAD_ID, PHONEMES, SILENCE_ID, UNKNOWN_ID, VOCAB_SIZE, TimedPhonemes,
                                          phoneme_id, phonemize)
