"""The `soundstorm` command line (`python -m soundstorm_jax` too).

  main       the parser, global options (--quiet, --json, --debug, --verbose), exit codes
  common     errors, output, audio files, codec loading, output folders, library log filtering
  prepare    `soundstorm prepare`: audio folder or embedded corpus -> TFDS datasets (+ codes)
  train      `soundstorm train`: train.py's loop, same flags
  codec_io   `soundstorm encode` / `soundstorm decode`: audio files <-> codes (.npy)
  generate   `soundstorm generate`: samples from a trained SoundStorm workdir or export, on a device mesh
  export     `soundstorm export`: a run's inference export (config + EMA parameters, the codec)
  serve      `soundstorm serve`: an HTTP server around one model, batching concurrent requests
  demo       `soundstorm demo`: the whole pipeline on the embedded corpus
  launch     `soundstorm launch`: a command as the N processes of one JAX job on this machine
  spectrogram  mel spectrogram pictures (matplotlib) for `generate --spectrogram`, the demo, the server, TensorBoard
"""
