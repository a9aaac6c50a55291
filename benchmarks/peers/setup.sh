#!/usr/bin/env bash
# The peer servers of benchmarks/serving.py, each in a virtual environment of its own
# (their pins conflict with onnxforge's and with each other's): MLServer and KServe's
# ModelServer, each with ONNX Runtime to run the same model file as onnxforge.
#
#   bash benchmarks/peers/setup.sh              # both, under ~/.cache/onnxforge-peers
#   bash benchmarks/peers/setup.sh mlserver     # one of them
#   ONNXFORGE_PEERS=/somewhere bash benchmarks/peers/setup.sh
#
# Nothing is written inside the repository. serving.py finds the environments in the same
# place (ONNXFORGE_PEERS or its --peers option) and skips a peer whose environment is absent.
# The runtimes themselves (a custom MLServer MLModel, a kserve.Model) are the files beside
# this script; neither project ships an ONNX Runtime server of its own that fits (MLServer
# has no ONNX runtime on PyPI; KServe's ONNX path is Triton in a container).
set -euo pipefail

PEERS="${ONNXFORGE_PEERS:-$HOME/.cache/onnxforge-peers}"
PYTHON="${PEERS_PYTHON:-python3.11}"
# The versions the committed figures come from; override to compare others.
MLSERVER_VERSION="${MLSERVER_VERSION:-1.7.1}"
KSERVE_VERSION="${KSERVE_VERSION:-0.21.0}"
ORT_VERSION="${ORT_VERSION:-1.32.0}"

make_env() {  # make_env NAME PACKAGE...
    local name="$1"
    shift
    local env="$PEERS/$name"
    if [ ! -x "$env/bin/python" ]; then
        "$PYTHON" -m venv "$env"
    fi
    "$env/bin/python" -m pip install --quiet --upgrade pip
    "$env/bin/python" -m pip install --quiet "$@"
    # What serving.py records about the environment.
    "$env/bin/python" -m pip freeze > "$env/onnxforge-peer-freeze.txt"
    echo "$name: $env ($("$env/bin/python" --version 2>&1))"
}

wanted=("$@")
[ ${#wanted[@]} -eq 0 ] && wanted=(mlserver kserve)
mkdir -p "$PEERS"
for peer in "${wanted[@]}"; do
    case "$peer" in
        # uvloop 0.22 broke MLServer 1.7.1's inference workers ("There is no current event
        # loop" at start; MLServer issue 2286, fix unreleased): the last one that works.
        mlserver) make_env mlserver "mlserver==$MLSERVER_VERSION" "onnxruntime==$ORT_VERSION" \
            "uvloop<0.22" ;;
        kserve) make_env kserve "kserve==$KSERVE_VERSION" "onnxruntime==$ORT_VERSION" ;;
        *) echo "unknown peer: $peer (mlserver or kserve)" >&2; exit 2 ;;
    esac
done
