#!/usr/bin/env bash
# Set-up shared by scripts/run.sh and scripts/test.sh, for a fresh clone, as root or not:
#   .venv with the pinned torch and this package (editable, with the test extra), then the Fashion-MNIST data set
#   (Debian's dataset-fashion-mnist: installed with apt-get when root, else the command to run is printed).
# Re-running is cheap: pip runs again only when pyproject.toml or the pins change.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"  # any torch >= 2.1 works; this pin matches CI
DATA_PACKAGE=dataset-fashion-mnist
DATA_FILE=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

is_root() { [ "$(id -u)" = 0 ]; }
apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $PYTHON"
    if ! "$PYTHON" -m venv .venv; then
        rm -rf .venv
        # Debian ships venv's pip bootstrap separately
        if is_root && command -v apt-get >/dev/null; then
            apt_install python3-venv
            "$PYTHON" -m venv .venv
        else
            echo "setup: '$PYTHON -m venv' failed; as root run: apt-get install -y python3-venv (or set PYTHON=...)" >&2
            exit 1
        fi
    fi
fi

stamp=.venv/.randsac-setup
want="$TORCH_PINS $(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing $TORCH_PINS and this package into .venv"
    .venv/bin/python -m pip install -q $TORCH_PINS
    .venv/bin/python -m pip install -q -e '.[test]'
    echo "$want" > "$stamp"
fi

if [ ! -e "$DATA_FILE" ]; then
    if is_root && command -v apt-get >/dev/null; then
        echo "setup: installing $DATA_PACKAGE (the real data set of the default run and the tests)"
        apt_install "$DATA_PACKAGE"
        [ -e "$DATA_FILE" ] || { echo "setup: $DATA_PACKAGE is installed but $DATA_FILE is missing; as root run: apt-get install --reinstall -y $DATA_PACKAGE" >&2; exit 1; }
    else
        echo "setup: Fashion-MNIST is not installed; as root run: apt-get install -y $DATA_PACKAGE" >&2
        exit 3  # run.sh and test.sh go on: a run on other data works, the tests that need it skip saying the same
    fi
fi
