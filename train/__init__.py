"""Offline training: MLflow-tracked transfer learning, selection and ONNX export. Run `python -m train -h`."""
