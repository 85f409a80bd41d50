"""A diffusers UNet2DModel trained on digits, optimized with optkit (see README.md)."""
