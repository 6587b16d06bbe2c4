"""Training stage: deep residual Contrastive RL."""
