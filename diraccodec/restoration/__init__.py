"""Restoration: the residual U-Net and the filter that corrects the base reconstruction at 0 steps."""
