"""The `soundstorm` command line (`python -m soundstorm_jax` too).

  main       the parser, global options (--quiet, --json, --debug), exit codes
  common     errors, output, audio files, codec loading
  prepare    `soundstorm prepare`: audio folder or embedded corpus -> TFDS datasets (+ codes)
  train      `soundstorm train`: train.py's loop, same flags
  codec_io   `soundstorm encode` / `soundstorm decode`: audio files <-> codes (.npy)
  generate   `soundstorm generate`: samples from a trained SoundStorm workdir
  spectrogram  spectrogram PNGs (numpy + zlib) for `generate --spectrogram`
"""
