"""The fields every config has, with their defaults; each config overrides some.

Sections: model (ConformerWrapper fields), objective (SoundStorm fields), data
(the grain pipeline + where the prepared codes dataset lives), optimizer,
mesh (shape + logical-axis rules), checkpoint, logging.
"""
import ml_collections

# Logical axis -> mesh axes. Tried in order; a mesh axis is used once per array,
# so 'batch' (activations) claims 'data' and 'fsdp' first and parameters, which
# have no batch axis, are sharded over 'fsdp' on 'embed'. With mesh sizes of 1
# a rule is a no-op: the strategy is chosen by mesh.shape alone.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),      # FSDP on the model dimension (use ("mlp", "fsdp") to shard the FFN width instead)
    ("heads", "tensor"),    # tensor parallel: attention heads,
    ("mlp", "tensor"),      #   FFN / conv width,
    ("vocab", "tensor"),    #   output vocabulary
    ("length", None),
    ("kv", None),
    ("levels", None),
    ("layers", None),
)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.kind = "soundstorm"  # The model train.py trains: 'soundstorm' or 'codec' (configs/codec_*.py).
    c.seed = 0
    c.total_steps = 10_000

    # Unset (None) fields marked "data" are the codes dataset's: the run fills them from its metadata when it starts
    # and keeps them in WORKDIR/config.json; a value set here or on the command line must agree with the dataset
    # (soundstorm_jax/training/soundstorm_task.py, resolve_from_codes). num_semantic_token_ids=0: no semantic
    # conditioning even when the dataset has semantic tokens.
    placeholder = ml_collections.config_dict.placeholder
    c.model = ml_collections.ConfigDict(dict(
        codebook_size=placeholder(int), num_quantizers=placeholder(int),  # data: codebook size, levels / groups
        grouped_quantizers=1,
        num_semantic_token_ids=placeholder(int),  # data: semantic vocabulary (else 0, none)
        semantic_pad_id=-1,
        acoustic_per_semantic=placeholder(float),  # data: frame_rate / semantic_rate
        dtype="bfloat16", param_dtype="float32",  # bf16 compute, fp32 master weights
        conformer=ml_collections.ConfigDict(dict(dim=512, depth=2))))

    # Not type-safe: `steps` is an int (first level) or a tuple with one count per level.
    c.objective = ml_collections.ConfigDict(dict(
        steps=18, schedule="cosine", no_replace_prob=0.0, random_token_prob=0.0, label_smoothing=0.0,
        self_cond=False, self_token_critic=False, cond_drop_prob=0.0), type_safe=False)

    c.data = ml_collections.ConfigDict(dict(
        dir=ml_collections.config_dict.placeholder(str),  # prepared CodesDataset's data_dir (required)
        train_split="train", eval_split="validation",
        batch_size=8, eval_batch_size=ml_collections.config_dict.placeholder(int),
        max_frames=512,
        frame_rate=placeholder(float),  # data: codec frames per second (50 when the dataset records none)
        semantic_rate=placeholder(float),  # data: semantic tokens per second, with semantic conditioning
        code_pad_value=0, num_threads=2, prefetch_buffer_size=4))

    c.optimizer = ml_collections.ConfigDict(dict(
        lr=3e-4, warmup_steps=1000, end_lr_factor=0.01, b1=0.9, b2=0.98, eps=1e-8,
        weight_decay=0.01, clip_norm=1.0,
        grad_accum_steps=1,  # microbatches per update (scan inside the step)
        ema_decay=ml_collections.config_dict.placeholder(float)))  # e.g. 0.999; None = no EMA

    # Arrays without logical names (optimizer counters, rngs) of at least fsdp_min_size elements are split over
    # 'fsdp' on their largest divisible dimension (soundstorm_jax/training/sharding.py); the rest replicated.
    c.mesh = ml_collections.ConfigDict(dict(
        shape=ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)),
        rules=DEFAULT_RULES, fsdp_min_size=4096))

    # XLA options for the jitted steps; e.g. xla_backend_optimization_level=0
    # compiles ~3x faster on a CPU (tests, smoke runs).
    c.compiler_options = ml_collections.ConfigDict(dict(
        xla_backend_optimization_level=ml_collections.config_dict.placeholder(int),
        xla_llvm_disable_expensive_passes=ml_collections.config_dict.placeholder(bool)))

    c.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=1000, keep=3, async_save=True))

    # Metrics go to stdout, workdir/metrics.jsonl and (tensorboard=True) TensorBoard event files in
    # workdir/tensorboard. With samples_codec set (a codec workdir or an EnCodec checkpoint file), each evaluation
    # also logs tensorboard_samples generated samples of the evaluation split as audio and spectrograms (0: none).
    c.logging = ml_collections.ConfigDict(dict(
        every_steps=50, eval_every_steps=1000,
        eval_batches=ml_collections.config_dict.placeholder(int),  # None = the whole split
        peak_flops=ml_collections.config_dict.placeholder(float),  # per device, for MFU
        tensorboard=True, tensorboard_samples=2,
        samples_codec=ml_collections.config_dict.placeholder(str)))

    # JAX's persistent compilation cache (soundstorm_jax/training/compile_cache.py): a restarted run loads its
    # compiled steps. dir '' = workdir/compile_cache; JAX_COMPILATION_CACHE_DIR, when set, is used instead.
    c.compile_cache = ml_collections.ConfigDict(dict(enabled=True, dir="", min_compile_seconds=0.1))
    return c
