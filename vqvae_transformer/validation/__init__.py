"""vqvae_transformer.validation"""
