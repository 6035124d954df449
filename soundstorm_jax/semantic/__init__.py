"""Semantic tokens from raw speech: HuBERT / wav2vec 2.0 encoders in Flax, their weight import, k-means.

``SpeechEncoder`` (``encoder``) computes the hidden states of any layer of a HuBERT
or wav2vec 2.0 model from 16 kHz audio, batched with a padding mask;
``import_speech_encoder`` (``weights``) reads transformers or fairseq checkpoints;
``kmeans`` fits, saves, loads and imports (scikit-learn) k-means codebooks and
assigns features to their nearest centre; ``SemanticTokenizer`` (``tokenizer``) puts
them together: audio -> semantic ids, loadable from files with
``load_semantic_tokenizer``. Offline, with no encoder to download, ``LogMelTokenizer``
(``log_mel``) gives k-means ids of weight-free log-mel frames instead.
"""
from soundstorm_jax.semantic.config import (PRESETS, SpeechEncoderConfig, hubert_base, hubert_large, wav2vec2_base,
                                            wav2vec2_large)
from soundstorm_jax.semantic.encoder import LAST, SpeechEncoder, check_output_layer, init_speech_encoder
from soundstorm_jax.semantic.kmeans import (KMeansCodebook, fit_kmeans, greedy_kmeans_plus_plus, load_kmeans,
                                            mean_pool, nearest_center)
from soundstorm_jax.semantic.log_mel import LogMelConfig, log_mel_features, log_mel_variables
from soundstorm_jax.semantic.tokenizer import (LogMelTokenizer, SemanticTokenizer, layer_features,
                                               load_semantic_tokenizer, load_speech_encoder)
from soundstorm_jax.semantic.weights import (fairseq_name, import_speech_encoder, infer_config, read_safetensors,
                                             transformers_name)

__all__ = [
    "KMeansCodebook", "LAST", "LogMelConfig", "LogMelTokenizer", "PRESETS", "SemanticTokenizer", "SpeechEncoder", "SpeechEncoderConfig",
    "check_output_layer", "fairseq_name", "fit_kmeans", "greedy_kmeans_plus_plus", "hubert_base", "hubert_large",
    "import_speech_encoder", "infer_config", "init_speech_encoder", "layer_features", "load_kmeans", "log_mel_features", "log_mel_variables",
    "load_semantic_tokenizer", "load_speech_encoder",
    "mean_pool", "nearest_center", "read_safetensors", "transformers_name", "wav2vec2_base", "wav2vec2_large",
]
