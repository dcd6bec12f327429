"""The shared trainer core: data, augmentation, models (timm), losses, the training loop, metrics,
resume states and inference. It takes a config and data, trains, and reports each epoch through a
callback; it never imports Optuna or MLflow (an import-linter contract)."""
