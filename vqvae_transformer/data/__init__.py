"""vqvae_transformer.data: the folder contract, Hub datasets, the simulated default and train/validation splits."""

from .default import default_dataset_dir, load_training_data
from .folder import IMAGE_EXTENSIONS, SpectrogramData, clear_image_cache, load_image_folder, scan_user_folders
from .hub_dataset import load_hub_dataset
from .splits import load_split, save_split, stratified_split

__all__ = [
    "IMAGE_EXTENSIONS",
    "SpectrogramData",
    "clear_image_cache",
    "default_dataset_dir",
    "load_hub_dataset",
    "load_image_folder",
    "load_split",
    "load_training_data",
    "save_split",
    "scan_user_folders",
    "stratified_split",
]
