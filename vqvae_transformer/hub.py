"""Model card and push to the Hugging Face Hub.

:func:`write_model_card` writes ``README.md`` (YAML metadata, what the model is, its data, its figures, how to use
it, the sample grid) into a saved model folder; :func:`push_to_hub` uploads the folder, never its training
checkpoints. Loading back by repo id is :meth:`VQVAETransformerPipeline.from_pretrained("org/name")
<vqvae_transformer.models.pipeline.VQVAETransformerPipeline.from_pretrained>`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .errors import UserInputError
from .layout import MODEL_INDEX, PRIOR_FOLDER, SUMMARY_FILE, VQVAE_FOLDER

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_COMMIT_MESSAGE", "PUSH_IGNORE_PATTERNS", "push_to_hub", "write_model_card"]

DEFAULT_COMMIT_MESSAGE = "Upload vqvae_transformer model"
DEFAULT_DATASET_DESCRIPTION = (
    "Per-person radar micro-Doppler spectrograms laid out as `ID_<k>/*.png` (one folder per person, 1-based ids). "
    "Without a data folder, training uses the embedded simulator of people walking towards a radar "
    "(Boulic-Thalmann gait model, ellipsoid body segments, STFT spectrogram)."
)
# Training state (Accelerate save_state) lives in checkpoints/ and is never pushed (docs/DESIGN.md §3).
PUSH_IGNORE_PATTERNS = ["checkpoints/*", "checkpoints/**", "*.tmp"]
SAMPLE_GRID_FILE = "sample_grid.png"
CARD_TAGS = ["micro-doppler", "radar", "spectrogram", "vq-vae", "gpt2", "vqvae-transformer",
             "image-generation", "unconditional-image-generation"]

# Figures shown first in the card when the training summary has them (searched by key name at any depth).
_HEADLINE_KEYS = {
    "codebook_usage": "codebook usage (validation split)",
    "codebook_perplexity": "codebook perplexity",
    "normalized_entropy": "normalised code entropy",
    "psnr": "reconstruction PSNR (dB)",
    "ssim": "reconstruction SSIM",
    "val_loss": "prior validation loss",
    "prior_val_loss": "prior validation loss",
    "wall_time_s": "wall time (s)",
    "seconds": "wall time (s)",
}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as err:
        raise UserInputError(f"{path} is not valid JSON ({err}); fix or delete it") from err


def _flatten(summary: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dict -> ``[("a.b", value), ...]`` of scalar leaves (numbers, strings, booleans)."""
    rows: list[tuple[str, object]] = []
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            rows.append((name, value))
    return rows


def _format_value(name: str, value: object) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return str(value)
    if isinstance(value, float):
        if "usage" in name and 0.0 <= value <= 1.0:
            return f"{value:.1%}"
        return f"{value:.4g}"
    return str(value)


def _figures_table(summary: dict) -> str:
    """A markdown table of the summary's figures, headline figures first."""
    rows = _flatten(summary)
    if not rows:
        return "No training summary was saved with this model."
    headline = [(n, v) for n, v in rows if n.split(".")[-1] in _HEADLINE_KEYS]
    rest = [(n, v) for n, v in rows if n.split(".")[-1] not in _HEADLINE_KEYS]
    lines = ["| figure | value |", "|---|---|"]
    for name, value in headline + rest:
        label = _HEADLINE_KEYS.get(name.split(".")[-1])
        shown = f"{name} ({label})" if label else name
        lines.append(f"| {shown} | {_format_value(name, value)} |")
    return "\n".join(lines)


def _model_facts(model_dir: Path) -> dict:
    """Facts read from the saved configs: users, resolution, channels, codebook, token grid, prior sizes."""
    index = _read_json(model_dir / MODEL_INDEX)
    vqvae = _read_json(model_dir / VQVAE_FOLDER / "config.json")
    prior = _read_json(model_dir / PRIOR_FOLDER / "config.json")
    return {
        "user_ids": index.get("user_ids") or prior.get("user_ids") or [],
        "resolution": index.get("resolution", vqvae.get("sample_size")),
        "channels": index.get("channels", vqvae.get("out_channels")),
        "first_stage": vqvae.get("_class_name", "unknown"),
        "codebook_size": vqvae.get("num_vq_embeddings", prior.get("codebook_size")),
        "codebook_dim": vqvae.get("codebook_dim"),
        "token_grid": prior.get("token_grid"),
        "prior_layers": prior.get("n_layer"),
        "prior_width": prior.get("n_embd"),
        "prior_heads": prior.get("n_head"),
    }


def _card_metadata(license_name: str) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(library_name="diffusers", license=license_name, tags=CARD_TAGS,
                         pipeline_tag="unconditional-image-generation")
    return data.to_yaml()


def write_model_card(model_dir: str | Path, summary: dict | None = None,
                     dataset_description: str = DEFAULT_DATASET_DESCRIPTION, repo_id: str | None = None,
                     license_name: str = "mit") -> Path:
    """Write ``README.md`` into a saved model folder.

    Args:
        model_dir: folder written by ``VQVAETransformerPipeline.save_pretrained`` (the training output folder).
        summary: figures to show; defaults to ``model_dir/training_summary.json`` if present (any nesting; known
            names such as ``codebook_usage``, ``psnr``, ``val_loss`` and wall times are listed first).
        dataset_description: one paragraph on the training data.
        repo_id: the Hub repo id used in the usage example (defaults to ``<your-org>/<folder name>``).
        license_name: the license in the YAML metadata.

    Returns:
        The path of the written ``README.md``.

    Raises:
        UserInputError: ``model_dir`` is not a saved pipeline.
    """
    model_dir = Path(model_dir)
    if not (model_dir / MODEL_INDEX).is_file():
        raise UserInputError(f"{model_dir} holds no model_index.json; write the card into a saved model folder")
    if summary is None:
        summary = _read_json(model_dir / SUMMARY_FILE)
    facts = _model_facts(model_dir)
    repo = repo_id or f"<your-org>/{model_dir.resolve().name}"
    ids = facts["user_ids"]
    first_ids = ids[:3] if ids else [1]
    channels = {1: "grayscale", 3: "colour"}.get(facts["channels"], f"{facts['channels']}-channel")
    grid = facts["token_grid"] or ["?", "?"]

    sections = [
        f"---\n{_card_metadata(license_name).strip()}\n---",
        f"# {model_dir.resolve().name}: per-person radar micro-Doppler spectrogram generator",
        "A two-stage generator (VQ-VAE tokenizer + GPT-2 prior) of micro-Doppler spectrograms, conditioned on the "
        "person. The first stage maps a spectrogram to a grid of discrete codes and back; the prior samples code "
        "grids for a chosen person token; classifier-free guidance uses a null-person token.",
        "## Model\n"
        f"- images: {facts['resolution']}×{facts['resolution']} {channels}, values in [-1, 1] inside the model\n"
        f"- first stage: `{facts['first_stage']}` with an EMA codebook of {facts['codebook_size']} codes "
        f"(code dim {facts['codebook_dim']}), token grid {grid[0]}×{grid[1]}\n"
        f"- prior: GPT-2, {facts['prior_layers']} layers, width {facts['prior_width']}, "
        f"{facts['prior_heads']} heads\n"
        f"- people: {len(ids)} (public ids {ids})",
        f"## Training data\n{dataset_description}",
        f"## Figures\n{_figures_table(summary)}",
        "## Usage\nNeeds the `vqvae_transformer` package (the first stage is a custom diffusers model).\n\n"
        "```python\n"
        "import torch\n"
        "from vqvae_transformer.models.pipeline import VQVAETransformerPipeline\n\n"
        f'pipe = VQVAETransformerPipeline.from_pretrained("{repo}")\n'
        f"out = pipe(user_ids={first_ids}, num_images_per_user=4, generator=torch.Generator().manual_seed(0))\n"
        "out.images[0].save(\"sample.png\")  # out.user_ids[i] is the person of out.images[i]\n"
        "```\n\n"
        "From the command line (writes `ID_<k>/gen_0000.png …`, `grid.png`, `generation_info.json`):\n\n"
        f"```bash\npython generate_main.py --model_dir {repo} --samples_per_user 10 --output_dir generated_images\n```",
    ]
    if (model_dir / SAMPLE_GRID_FILE).is_file():
        sections.append(f"## Samples\nRows are people, columns are samples.\n\n![sample grid]({SAMPLE_GRID_FILE})")
    card = model_dir / "README.md"
    card.write_text("\n\n".join(sections) + "\n")
    logger.info("wrote model card %s", card)
    return card


def push_to_hub(model_dir: str | Path, repo_id: str, token: str | None = None, private: bool | None = None,
                commit_message: str = DEFAULT_COMMIT_MESSAGE, create_pr: bool = False,
                subfolder: str | None = None) -> str:
    """Upload a saved model folder to the Hub, without its training checkpoints.

    Creates the repo if needed (``exist_ok=True``) and uploads everything except ``checkpoints/`` and ``*.tmp``.
    A folder without ``README.md`` gets one from :func:`write_model_card` first (not when uploading into a
    ``subfolder``, as diffusers' ``push_to_hub``).

    Args:
        model_dir: folder written by ``VQVAETransformerPipeline.save_pretrained`` (the training output folder).
        repo_id: ``org/name`` on the Hub.
        token: Hub token; defaults to the stored login (``hf auth login``) or ``HF_TOKEN``.
        private: create the repo as private (None: the Hub's default; ignored if it exists).
        commit_message: the commit message.
        create_pr: open a pull request with the upload instead of committing to ``main``.
        subfolder: the folder of the repo to upload into (``path_in_repo``); None: the repo's root.

    Returns:
        The URL of the commit (a ``huggingface_hub.CommitInfo``, which is a ``str``; its ``pr_url`` is the pull
        request's with ``create_pr``).

    Raises:
        UserInputError: ``model_dir`` is not a saved pipeline, or the Hub refused the token or the repo.
    """
    from huggingface_hub import create_repo, upload_folder
    from huggingface_hub.errors import HfHubHTTPError

    model_dir = Path(model_dir)
    if not (model_dir / MODEL_INDEX).is_file():
        raise UserInputError(f"{model_dir} holds no model_index.json, so it is not a saved model; "
                             "push the output folder of train_main.py")
    if not subfolder and not (model_dir / "README.md").is_file():
        write_model_card(model_dir, repo_id=repo_id)
    try:
        create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
        commit = upload_folder(repo_id=repo_id, folder_path=str(model_dir), repo_type="model", token=token,
                               commit_message=commit_message, ignore_patterns=list(PUSH_IGNORE_PATTERNS),
                               create_pr=create_pr, path_in_repo=subfolder)
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403, 404):
            raise UserInputError(f"the Hub refused to push to {repo_id!r} (HTTP {status}); log in with "
                                 "`hf auth login` or pass a write token, and check the repo id") from err
        raise
    logger.info("pushed %s to %s: %s%s", model_dir, repo_id, commit.commit_url,
                f" (pull request {commit.pr_url})" if commit.pr_url else "")
    return commit
