"""pandemonium.tracking: MLflow and TensorBoard helpers (the run tree, metric logging)."""
