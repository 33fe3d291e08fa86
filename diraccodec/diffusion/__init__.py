"""The diffusion decoder: noise schedule and sampler over the residual of the base image."""
