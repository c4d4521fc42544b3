"""Networks, pretrained weights, checkpoints and window scoring."""
