#!/usr/bin/env bash
# Build the virtual environment that holds the reference package (paoding-dl
# 1.0.0.post3 from PyPI) next to the repository, in .venv-paoding-dl/.
#
# paoding-dl is written for Keras 2 (tf.keras); with TensorFlow >= 2.16 that
# means tf-keras and TF_USE_LEGACY_KERAS=1 (set by run_reference.sh).
# Its metadata has a malformed requirement ("opencv-python (>=4.5numpy)"):
# pip >= 24.1 refuses the package outright, so the venv keeps pip < 23.3 and
# installs it without dependencies; its real dependencies are listed here.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv-paoding-dl}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet "pip<23.3"
"$VENV/bin/python" -m pip install --quiet \
    "tensorflow-cpu==2.16.2" "tf-keras==2.16.0" "numpy<2" \
    "scikit-learn" "pandas" "tabulate" "pydot" "progressbar2" \
    "opencv-python-headless<4.11" "h5py" "importlib-metadata"
"$VENV/bin/python" -m pip install --quiet --no-deps "paoding-dl==1.0.0.post3"
TF_USE_LEGACY_KERAS=1 "$VENV/bin/python" -c \
    "import tensorflow as tf, tf_keras, paoding; from paoding.pruner import Pruner; \
print('tensorflow', tf.__version__, 'tf_keras', tf_keras.__version__, 'paoding-dl ok')"
