"""Export (SavedModel, ONNX, LiteRT, .keras) and `kcnn serve`."""
