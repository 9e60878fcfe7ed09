"""Looking into models: per-layer summary with MACs, Grad-CAM explanations, plots."""
