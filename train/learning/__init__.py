"""Learning: backbones, the model, the feature cache, fine-tuning, distillation, calibration, metrics."""
