"""vqvae_transformer.analysis"""
