"""Perceptual networks (LPIPS with AlexNet or VGG16) for evaluation and training losses."""
