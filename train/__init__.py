"""Offline training: MLflow-tracked transfer learning, selection and ONNX export. Run `python -m train -h`."""

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # privacy by default, for every use of train/
