"""Training: the procedural shapes data set, its evaluator, and a small latent-diffusion training loop.

`loop` is the generic part (modules, optimizer, a step function, checkpoints, resume, progress
callbacks), `ldm` the latent-diffusion objective, `vae` the autoencoder objective; `builtin` trains the
built-in model with them and `evaluate` measures it through the normal generation path.
"""
