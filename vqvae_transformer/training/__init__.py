"""vqvae_transformer.training"""
