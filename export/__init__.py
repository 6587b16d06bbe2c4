"""Export stage: ONNX graphs and TensorRT engines carrying the policy spec."""
