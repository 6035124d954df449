#!/usr/bin/env bash
# Recreate the virtual environment holding the PyTorch reference (soundstorm-pytorch 0.6.1)
# used by tools/make_reference_fixtures.py. Keep it OUTSIDE the repository.
#
#   VENV=../refenv PYTHON=python3.11 bash tools/reference_env.sh    (VENV: any directory outside the repo)
#   PYTHONPATH="$VENV/fairseq_stub" "$VENV/bin/python" tools/make_reference_fixtures.py
#
# Why the stub: soundstorm-pytorch -> audiolm-pytorch depends on `fairseq`, whose sdists
# do not build on Python 3.11 with current pip (0.12.2's metadata is rejected, 0.12.1's
# setup.py fails). soundstorm-pytorch only needs `import fairseq` to succeed at import
# time, so an empty distribution named fairseq satisfies the resolver, is then
# uninstalled, and an empty `fairseq` package on PYTHONPATH satisfies the import.
set -euo pipefail

: "${VENV:?set VENV to the directory of the virtual environment to create}"
PYTHON="${PYTHON:-python3.11}"
mkdir -p "$VENV" && VENV="$(cd "$VENV" && pwd)"   # make it absolute

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --upgrade pip

# empty `fairseq` package: used on PYTHONPATH, and installed once as a stand-in distribution
STUB="$VENV/fairseq_stub"
mkdir -p "$STUB/fairseq"
: > "$STUB/fairseq/__init__.py"
cat > "$STUB/pyproject.toml" <<'TOML'
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "fairseq"
version = "0.12.2"
description = "empty stand-in so that audiolm-pytorch's dependency resolves"

[tool.setuptools]
packages = ["fairseq"]
TOML
"$VENV/bin/pip" install "$STUB"

# the reference itself (torchaudio must match torch)
"$VENV/bin/pip" install torch==2.9.1 'torchaudio==2.9.*' soundstorm-pytorch==0.6.1

# drop the stand-in distribution; the import is served by PYTHONPATH="$STUB"
"$VENV/bin/pip" uninstall -y fairseq
rm -rf "$STUB/build" "$STUB"/*.egg-info

PYTHONPATH="$STUB" "$VENV/bin/python" -c "
from soundstorm_pytorch import SoundStorm, ConformerWrapper
from importlib.metadata import version
for p in ('torch', 'soundstorm-pytorch', 'hyper-connections', 'einops'):
    print(p, version(p))
"
