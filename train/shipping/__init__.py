"""Shipping: selection, ONNX export, int8, gates, evaluation, retest, retention, the expert, publishing."""
