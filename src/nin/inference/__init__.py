"""Using a trained network: evaluation, prediction, class activation maps, ONNX export, and the shipped weights."""
