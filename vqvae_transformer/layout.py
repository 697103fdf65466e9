"""The layout of a model folder written by ``train_main.py``: one place for every folder and file name.

::

    OUTPUT_DIR/                      (default DEFAULT_MODEL_DIR)
        model_index.json             the diffusers pipeline index (+ stage1_fingerprint.json beside it)
        vqvae/                       stage 1: config.json + diffusion_pytorch_model.safetensors
        prior/                       stage 2: config.json + model.safetensors (+ its stage-1 fingerprint)
        split.json, data_info.json   which images trained and validated, and how they were read
        training_summary.json        settings and figures of both stages; README.md the model card
        sample_grid.png, figures/    pictures; checkpoints/<stage>/checkpoint-N  resumable training state

Every module that reads or writes one of these names imports it from here. Standard library only.
"""

DEFAULT_MODEL_DIR = "outputs/vqvae_transformer"  # train_main's --output_dir, the other tools' --model_dir
MODEL_INDEX = "model_index.json"
VQVAE_FOLDER = "vqvae"
PRIOR_FOLDER = "prior"
PIPELINE_PARTS = (MODEL_INDEX, VQVAE_FOLDER, PRIOR_FOLDER)  # what generation needs
SPLIT_FILE = "split.json"
DATA_INFO_FILE = "data_info.json"
SUMMARY_FILE = "training_summary.json"
MODEL_CARD = "README.md"
SAMPLE_GRID = "sample_grid.png"
FIGURES_FOLDER = "figures"
CHECKPOINTS_FOLDER = "checkpoints"
GENERATION_INFO_FILE = "generation_info.json"  # in generate_main's output folder: settings, counts, attribution
