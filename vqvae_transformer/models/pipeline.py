"""Both stages behind one ``from_pretrained`` / ``__call__``: GPT-2 prior -> code tokens -> first stage -> images.

A saved pipeline is a folder (docs/DESIGN.md §3 "Saved model")::

    model_index.json     ``_class_name`` ``["pipeline", "VQVAETransformerPipeline"]``, component classes, user_ids,
                         resolution, channels, value_range, format_version
    pipeline.py          a two-line loader shim that imports this module (the installed package)
    vqvae/               the first stage (config.json + diffusion_pytorch_model.safetensors)
    prior/               the GPT-2 prior (config.json + model.safetensors + generation_config.json)

Loading (diffusers 0.42, docs/DESIGN.md §7): with the package installed, all of these give the same pipeline::

    VQVAETransformerPipeline.from_pretrained(folder_or_repo_id)
    diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)

The second is diffusers' custom-pipeline mechanism: ``_class_name`` in list form ``[file, class]`` makes
``DiffusionPipeline.from_pretrained`` import ``<folder>/pipeline.py`` (which diffusers runs only with
``trust_remote_code=True``) and take the class from it. The shim holds no model code; it imports
``vqvae_transformer.models.pipeline``. :meth:`VQVAETransformerPipeline.from_pretrained` checks that the folder's
``pipeline.py`` is exactly the shim this release writes before letting diffusers import it, and also accepts
folders saved before the shim existed (``_class_name`` a plain string, no ``pipeline.py``).
``model_index.json`` names ``["vqvae_transformer.models.first_stage", "VQFirstStage"]`` for the first stage;
diffusers imports that module by name, so ``diffusers.AutoModel.from_pretrained(folder, subfolder="vqvae")`` and
``transformers.AutoModelForCausalLM.from_pretrained(folder, subfolder="prior")`` load the two stages alone. A Hub
repo id is turned into a local snapshot first (``snapshot_download``, offline from the cache with
``HF_HUB_OFFLINE=1``), then the folder is loaded.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (module-level name needed by pipelines, §7)
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from transformers import GPT2LMHeadModel

from ..data.colormap import CANDIDATES as COLORMAP_CANDIDATES, scalar_to_rgb
from ..data.folder import decode_pil_image, stack_images
from ..errors import UserInputError
from ..layout import MODEL_INDEX, PRIOR_FOLDER, VQVAE_FOLDER
from . import first_stage as first_stage_module
from .fingerprint import check_model_folder
from .first_stage import VQFirstStage, KLFirstStage
from .prior import grid_to_sequence, sample_tokens, token_order_of, vocabulary_from_config

logger = logging.getLogger(__name__)

# Classifier-free guidance of generate_main and the pipeline unless told otherwise. A CPU-preset model of the default
# data, 310 samples per setting, same seed, temperature 1 (judge accuracy / domain FID / diversity ratio):
# 1: 0.874 / 5.20 / 1.37; 1.25: 0.903 / 3.34 / 1.27; 1.5: 0.965 / 3.23 / 1.25; 1.75: 0.952 / 4.86 / 1.16;
# 2: 0.955 / 6.99 / 1.11; 3: 0.900 / 17.4 / 1.10 (README). Stronger guidance overshoots into images no user makes.
DEFAULT_GUIDANCE_SCALE = 1.5
# Softmax temperature of generate_main and the pipeline unless told otherwise. The README's model, guidance 1.5,
# seeds 0-3 (means of judge accuracy / domain FID / diversity ratio): 1.0: 0.916 / 4.13 / 1.28 (FID above 3x the
# real-vs-real floor for 2 seeds of 4, diversity above 1.3 for 1); 0.9: 0.938 / 3.69 / 1.17 (all 4 seeds within
# the thresholds). The samples of a prior trained this briefly are a little more spread than real images.
DEFAULT_TEMPERATURE = 0.9

__all__ = ["DEFAULT_GUIDANCE_SCALE", "DEFAULT_TEMPERATURE", "FORMAT_VERSION", "VQVAETransformerPipeline",
           "VQVAETransformerPipelineOutput", "resolve_model_folder"]

FORMAT_VERSION = 1
# The loader shim save_pretrained writes beside model_index.json, and the [file, class] _class_name pointing at it.
SHIM_MODULE = "pipeline"
SHIM_SOURCE = '''"""Loader shim written by vqvae_transformer's save_pretrained; holds no model code.

With the vqvae_transformer package installed, diffusers.DiffusionPipeline.from_pretrained(this_folder,
trust_remote_code=True) imports this file and returns a VQVAETransformerPipeline.
"""

from vqvae_transformer.models.pipeline import VQVAETransformerPipeline  # noqa: F401
'''
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
_SEED_MODULUS = 2**63 - 1


@dataclass
class VQVAETransformerPipelineOutput(ImagePipelineOutput):
    """Output of :class:`VQVAETransformerPipeline`: diffusers' ``ImagePipelineOutput`` plus the user ids.

    Args:
        images: by ``output_type``: ``"pil"`` a list of PIL images (mode ``"L"`` for 1 channel, ``"RGB"`` for 3);
            ``"np"`` a float32 array ``[N, R, R, C]`` in [0, 1]; ``"pt"`` a float32 tensor ``[N, C, R, R]`` in
            [0, 1] on the CPU; ``"latent"`` the sampled code grids, an int64 tensor ``[N, h, w]`` on the CPU
            (row-major, the input of ``pipe.vqvae.decode_tokens``).
        user_ids: public (1-based folder) id of each image, in the same order.
    """

    images: list[PIL.Image.Image] | torch.Tensor | np.ndarray
    user_ids: list[int]


def _looks_like_repo_id(name: str) -> bool:
    """True for ``name`` or ``org/name`` strings that are not obviously local paths."""
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        return False
    return all(part and not part.startswith((".", "-")) for part in name.split("/"))


def resolve_model_folder(path_or_repo_id: str | os.PathLike, revision: str | None = None,
                         token: str | bool | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Turn a local folder or a Hub repo id into a local folder holding a saved pipeline.

    A local folder is used as is. Anything else goes through ``huggingface_hub.snapshot_download``, which
    honours ``HF_HUB_OFFLINE`` and the cache (``HF_HOME``).

    Args:
        path_or_repo_id: a folder saved by :meth:`VQVAETransformerPipeline.save_pretrained` or a repo id
            (``org/name``).
        revision: Hub revision (branch, tag or commit sha); defaults to ``main``.
        token: Hub token for private repos.
        cache_dir: Hub cache folder (defaults to ``$HF_HOME/hub``).

    Returns:
        The folder that holds ``model_index.json``.

    Raises:
        UserInputError: the folder does not exist and no Hub repo of that name could be fetched.
    """
    name = os.fspath(path_or_repo_id)
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise UserInputError(f"model path {name} is a file, not a folder; pass the folder saved by train_main.py")
    if not _looks_like_repo_id(name):
        raise UserInputError(f"no model folder at {name}; train one with train_main.py or pass a Hub repo id "
                             "(org/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id=name, revision=revision, token=token, cache_dir=cache_dir)
    except (HfHubHTTPError, LocalEntryNotFoundError, HFValidationError, ConnectionError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserInputError(f"no model folder at {name} and the Hub repo {name!r} could not be fetched "
                             f"({type(err).__name__}: {reason}); train one with train_main.py, check the repo id, "
                             "or pre-fill the cache and set HF_HUB_OFFLINE=1") from err
    return Path(folder)


def _check_saved_pipeline(folder: Path) -> dict:
    """Read ``model_index.json`` and check it is a pipeline of ours in the current format version."""
    index_file = folder / MODEL_INDEX
    if not index_file.is_file():
        raise UserInputError(f"{folder} holds no model_index.json, so it is not a saved pipeline; point to the "
                             "output folder of train_main.py")
    index = json.loads(index_file.read_text())
    class_name = index.get("_class_name")
    if isinstance(class_name, list) and len(class_name) == 2:  # [file, class]: diffusers' custom-pipeline form
        shim = folder / f"{class_name[0]}.py"
        if class_name[0] != SHIM_MODULE or not shim.is_file() or shim.read_text() != SHIM_SOURCE:
            raise UserInputError(f"{folder}/model_index.json points at {shim.name}, which is not the loader shim "
                                 "this project writes; re-save the model with this project")
        class_name = class_name[1]
    if class_name != VQVAETransformerPipeline.__name__:
        raise UserInputError(f"{folder} holds a {class_name!r}, not a {VQVAETransformerPipeline.__name__}; "
                             "point to a model saved by this project")
    version = index.get("format_version")
    if version != FORMAT_VERSION:
        raise UserInputError(f"{folder} was saved with format version {version}, this code reads version "
                             f"{FORMAT_VERSION}; retrain it or use the matching release of vqvae_transformer")
    for component in (VQVAE_FOLDER, PRIOR_FOLDER):
        if not (folder / component / "config.json").is_file():
            raise UserInputError(f"{folder / component} is missing (no config.json); the model folder is "
                                 "incomplete, re-save or re-download it")
    return index


def image_seeds(seed: int, count: int) -> list[int]:
    """Independent, reproducible per-image seeds derived from one seed (``numpy.random.SeedSequence``).

    Seed ``i`` does not depend on ``count``: ``image_seeds(s, n)[:m] == image_seeds(s, m)``.
    """
    states = np.random.SeedSequence(int(seed) % _SEED_MODULUS).generate_state(count, np.uint64)
    return [int(state) >> 1 for state in states]  # 63-bit, valid for torch.manual_seed


class VQVAETransformerPipeline(DiffusionPipeline):
    """Per-user spectrogram generator: a GPT-2 prior samples code tokens, the first stage decodes them.

    Args:
        vqvae: the first stage (:class:`VQFirstStage` or :class:`KLFirstStage`).
        prior: the ``GPT2LMHeadModel`` prior built by :func:`~vqvae_transformer.models.prior.build_prior`.
        user_ids: public 1-based ids in label order (index = 0-based label); defaults to the prior's
            ``config.user_ids``.
        resolution: image side R; defaults to the first stage's ``sample_size``.
        channels: 1 (grayscale) or 3 (colour); defaults to the first stage's ``out_channels``.
        value_range: the range the first stage was trained on, ``[-1, 1]``.
        format_version: version of the saved layout (checked when loading).
        colormap: the matplotlib colormap the training images were inverted through (1-channel model of their
            scalar, :mod:`vqvae_transformer.data.colormap`); images are returned coloured back in it (RGB).
            None: images have ``channels`` channels.

    The non-module arguments are saved in ``model_index.json`` and restored by :meth:`from_pretrained`.
    """

    model_cpu_offload_seq = "prior->vqvae"

    def __init__(
        self,
        vqvae: VQFirstStage | KLFirstStage,
        prior: GPT2LMHeadModel,
        user_ids: list[int] | None = None,
        resolution: int | None = None,
        channels: int | None = None,
        value_range: list[float] | tuple[float, float] = (-1.0, 1.0),
        format_version: int = FORMAT_VERSION,
        colormap: str | None = None,
    ):
        super().__init__()
        vocab = vocabulary_from_config(prior.config)
        if user_ids is None:
            user_ids = getattr(prior.config, "user_ids", None) or list(range(1, vocab.num_users + 1))
        user_ids = [int(u) for u in user_ids]
        if len(user_ids) != vocab.num_users:
            raise ValueError(f"user_ids has {len(user_ids)} entries ({user_ids}) but the prior has "
                             f"{vocab.num_users} users")
        if vocab.codebook_size != vqvae.config.num_vq_embeddings:
            raise ValueError(f"the prior has {vocab.codebook_size} codes but the first stage has "
                             f"{vqvae.config.num_vq_embeddings}")
        resolution = int(resolution if resolution is not None else vqvae.config.sample_size)
        grid = tuple(prior.config.token_grid)
        if vqvae.token_grid(resolution) != grid:
            raise ValueError(f"the first stage maps {resolution}px images to a {vqvae.token_grid(resolution)} "
                             f"grid but the prior expects {grid}")
        channels = int(channels if channels is not None else vqvae.config.out_channels)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        low, high = (float(v) for v in value_range)
        if not low < high:
            raise ValueError(f"value_range must be (low, high) with low < high, got {list(value_range)}")
        if colormap is not None and (colormap not in COLORMAP_CANDIDATES or channels != 1):
            raise ValueError(f"colormap must be None or one of {list(COLORMAP_CANDIDATES)} on a 1-channel model, got "
                             f"{colormap!r} with {channels} channel(s)")
        self.register_modules(vqvae=vqvae, prior=prior)
        self.register_to_config(user_ids=user_ids, resolution=resolution, channels=channels,
                                value_range=[low, high], format_version=int(format_version), colormap=colormap)
        # Decoded images are mapped from value_range to [-1, 1] (_to_model_range), which do_normalize undoes.
        self.image_processor = VaeImageProcessor(vae_scale_factor=vqvae.downsample_factor, do_resize=False,
                                                 do_normalize=True)

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "VQVAETransformerPipeline":
        """Load a pipeline from a local folder or a Hub repo id.

        Args:
            pretrained_model_name_or_path: folder written by :meth:`save_pretrained` (the training output
                folder) or a Hub repo id ``org/name`` (fetched with ``snapshot_download``; works offline from a
                pre-filled cache with ``HF_HUB_OFFLINE=1``).
            **kwargs: ``revision``, ``token``, ``cache_dir`` for the Hub; the rest goes to
                ``DiffusionPipeline.from_pretrained`` (e.g. ``torch_dtype``).

        Returns:
            The pipeline with both modules in eval mode.

        Raises:
            UserInputError: missing folder, unknown repo, a folder that is not one of our pipelines or one
                saved with another format version.
        """
        folder = resolve_model_folder(pretrained_model_name_or_path, revision=kwargs.pop("revision", None),
                                      token=kwargs.pop("token", None), cache_dir=kwargs.pop("cache_dir", None))
        index = _check_saved_pipeline(folder)
        module_name = index.get(VQVAE_FOLDER, [None])[0]
        if module_name != first_stage_module.__name__:
            raise UserInputError(f"{folder}/model_index.json names the first stage module {module_name!r}, "
                                 f"expected {first_stage_module.__name__!r}; re-save the model with this project")
        # The folder's pipeline.py (if model_index.json names it) was checked to be our shim, which only imports
        # this module: diffusers may import it.
        if isinstance(index.get("_class_name"), list):
            kwargs.setdefault("trust_remote_code", True)
        pipeline = super().from_pretrained(os.fspath(folder), **kwargs)
        check_model_folder(folder)  # prior/ and model_index.json must belong to this vqvae/
        vqvae_version = pipeline.vqvae.config.get("format_version")
        if vqvae_version != first_stage_module.FORMAT_VERSION:
            raise UserInputError(f"{folder / 'vqvae'} was saved with first-stage format version {vqvae_version}, "
                                 f"this code reads {first_stage_module.FORMAT_VERSION}; retrain or re-download it")
        pipeline.vqvae.eval()
        pipeline.prior.eval()
        return pipeline

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """``DiffusionPipeline.save_pretrained`` plus the loader shim ``pipeline.py`` (module docstring).

        ``model_index.json`` gets ``_class_name`` ``["pipeline", "VQVAETransformerPipeline"]`` so that
        ``diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` returns this class.

        Args:
            save_directory: the folder (created when missing).
            **kwargs: passed to ``DiffusionPipeline.save_pretrained`` (e.g. ``safe_serialization``); use
                :meth:`push_to_hub` to upload.

        Raises:
            UserInputError: ``push_to_hub=True`` (it would upload before the shim is written).
        """
        if kwargs.pop("push_to_hub", False):
            raise UserInputError("save_pretrained(push_to_hub=True) is not supported; call push_to_hub(repo_id)")
        super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        (folder / f"{SHIM_MODULE}.py").write_text(SHIM_SOURCE)
        index_file = folder / MODEL_INDEX
        index = json.loads(index_file.read_text())
        index["_class_name"] = [SHIM_MODULE, type(self).__name__]
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    # ------------------------------------------------------------------ user ids

    @property
    def user_ids(self) -> list[int]:
        """Public 1-based ids in label order."""
        return list(self.config.user_ids)

    def labels_for(self, user_ids: Sequence[int] | None) -> list[int]:
        """Map public ids to 0-based labels.

        Args:
            user_ids: public ids; None means all users.

        Returns:
            0-based labels in the order of ``user_ids``.

        Raises:
            UserInputError: an id the model does not know, naming the valid ids.
        """
        known = self.user_ids
        if user_ids is None:
            return list(range(len(known)))
        if isinstance(user_ids, int):
            user_ids = [user_ids]
        requested = [int(u) for u in user_ids]
        if not requested:
            raise UserInputError(f"user_ids is empty; pass some of the model's ids {_describe_ids(known)}")
        unknown = [u for u in requested if u not in known]
        if unknown:
            raise UserInputError(f"unknown user id(s) {unknown}; this model knows {_describe_ids(known)}")
        return [known.index(u) for u in requested]

    # ------------------------------------------------------------------ sampling

    @staticmethod
    def _image_generators(generator: torch.Generator | list[torch.Generator] | None,
                          count: int) -> list[torch.Generator | int]:
        """One generator per image: the caller's list, else per-image seeds derived from one draw of
        ``generator`` (of the global RNG without one); :meth:`__call__` makes generators of them chunk by chunk."""
        if isinstance(generator, (list, tuple)):
            if len(generator) != count:
                raise UserInputError(f"got a list of {len(generator)} generators for {count} images; pass one "
                                     "generator per image (len(user_ids) * num_images_per_user) or a single one")
            if not all(isinstance(g, torch.Generator) for g in generator):
                raise UserInputError("generator must be a torch.Generator or a list of them, got a list holding "
                                     f"{sorted({type(g).__name__ for g in generator})}")
            return list(generator)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise UserInputError(f"generator must be a torch.Generator or a list of them, got "
                                 f"{type(generator).__name__}")
        device = generator.device if generator is not None else "cpu"
        base = int(torch.randint(0, 2**62, (1,), generator=generator, device=device).item())
        return image_seeds(base, count)

    @property
    def output_channels(self) -> int:
        """Channels of the images ``__call__`` returns: 3 for a colormap model (coloured back), else ``channels``."""
        return 3 if getattr(self.config, "colormap", None) else int(self.config.channels)

    def _colour(self, images: torch.Tensor) -> torch.Tensor:
        """A colormap model's ``[N, 1, R, R]`` scalar in [-1, 1] -> ``[N, 3, R, R]`` in that colormap, in [-1, 1],
        so generated folders look like the data it was trained on; other models' images pass through."""
        name = getattr(self.config, "colormap", None)
        if not name:
            return images
        rgb = scalar_to_rgb(((images[:, 0] + 1.0) / 2.0).numpy(), name)  # (N, R, R, 3) in [0, 1]
        return torch.from_numpy(rgb).permute(0, 3, 1, 2).mul(2.0).sub(1.0).contiguous()  # (N, 3, R, R)

    def _to_model_range(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, C, R, R]`` in ``value_range`` -> float32 in [-1, 1] (what ``image_processor`` expects) on the CPU."""
        low, high = self.config.value_range
        images = images.float()
        if (low, high) != (-1.0, 1.0):
            images = (images - low) / (high - low) * 2.0 - 1.0
        return images.cpu()

    @torch.no_grad()
    def __call__(
        self,
        user_ids: Sequence[int] | int | None = None,
        num_images_per_user: int = 1,
        temperature: float = DEFAULT_TEMPERATURE,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        generator: torch.Generator | list[torch.Generator] | None = None,
        batch_size: int = 64,
        output_type: str = "pil",
        return_dict: bool = True,
        image: torch.Tensor | PIL.Image.Image | Sequence[PIL.Image.Image] | None = None,
        strength: float = 1.0,
    ) -> VQVAETransformerPipelineOutput | tuple:
        """Generate ``num_images_per_user`` images for each requested user.

        Requests are laid out user by user (all images of the first id, then the next, ...) and sampled in
        chunks of ``batch_size`` across users: one KV-cached ``generate()`` call per chunk
        (:func:`~vqvae_transformer.models.prior.sample_tokens`), then one first-stage decode, both on
        ``self._execution_device``.

        Reproducibility: every image is sampled from its own ``torch.Generator`` (Gumbel-max sampling, the same
        distribution as multinomial sampling; :class:`~vqvae_transformer.models.prior.GumbelSamplingLogitsProcessor`),
        so an image depends on its generator, its user and the sampling settings, not on ``batch_size`` or on
        the other images of the call. With a list, image ``i`` (in the user-major order above) uses
        ``generator[i]``; with one generator (or none: the global RNG) one number is drawn from it and image
        ``i`` gets a generator seeded with the ``i``-th seed derived from that number (:func:`image_seeds`),
        so the same seeded generator gives the same images whatever ``batch_size``. Images are identical for
        the same generators on the same device and software versions.

        Args:
            user_ids: public 1-based ids (one int or a list); None means every user the model knows.
            num_images_per_user: images per id (> 0).
            temperature: softmax temperature (> 0).
            top_k: keep the k most likely codes (None: all).
            top_p: nucleus threshold in (0, 1] (None: off).
            guidance_scale: classifier-free guidance (1 = off; the unconditional branch is the null user). The
                default, :data:`DEFAULT_GUIDANCE_SCALE`, costs two prior passes per token.
            generator: a ``torch.Generator`` or a list of ``len(user_ids) * num_images_per_user`` of them (one
                per image, any device); see above.
            batch_size: sequences per ``generate()`` call (> 0); changes speed and memory, not the images.
            output_type: ``"pil"`` (PIL images), ``"np"`` (float array ``[N, R, R, C]`` in [0, 1]), ``"pt"``
                (float tensor ``[N, C, R, R]`` in [0, 1], on the CPU) or ``"latent"`` (the code grids, an int64
                tensor ``[N, h, w]`` on the CPU, not decoded; ``pipe.vqvae.decode_tokens`` decodes them).
                Images go through ``diffusers.image_processor.VaeImageProcessor.postprocess``.
            return_dict: return a :class:`VQVAETransformerPipelineOutput` (else ``(images, user_ids)``).
            image: optional source recordings: a float tensor ``[N, C, R, R]`` as the first stage takes them
                (one per requested image, user-major order; the model's channels, resolution and
                ``value_range``), or ``PIL`` images (one for every image, one per requested user, or one per
                requested image), read as a training folder is: resized to the model's resolution, inverted
                through the model's colormap for a false-colour model, made gray for a 1-channel one. Each is
                encoded to codes and the start of its code sequence is kept: the prior writes the rest
                (variations of a recording, as diffusers' image-to-image pipelines take an ``image`` and a
                ``strength``).
            strength: in ``(0, 1]``, the share of the token grid the prior writes when ``image`` is given: the
                first ``round((1 - strength) x w)`` token columns (time order: the start of the recording; rows
                for a row-order prior) are kept from ``image``. 1 keeps nothing (plain sampling).

        Returns:
            :class:`VQVAETransformerPipelineOutput` with ``images`` (as ``output_type`` says) and the public
            ``user_ids`` of each image.

        Raises:
            UserInputError (a ``ValueError``): unknown user ids, a non-positive count or batch size, an unknown
                output type, a generator list of the wrong length or bad sampling settings.
        """
        if output_type not in OUTPUT_TYPES:
            raise UserInputError(f"output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}")
        for name, value in (("num_images_per_user", num_images_per_user), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserInputError(f"{name} must be a positive integer, got {value!r}")
        labels = self.labels_for(user_ids)
        all_labels = [label for label in labels for _ in range(num_images_per_user)]  # user-major order
        generators = self._image_generators(generator, len(all_labels))
        device = self._execution_device
        image = self._source_images(image, len(all_labels), num_images_per_user)  # (N, C, R, R) or None
        kept = self._kept_lines(strength, image, len(all_labels))

        outputs = []
        for start in self.progress_bar(range(0, len(all_labels), batch_size)):
            chunk = all_labels[start:start + batch_size]
            chunk_generators = [g if isinstance(g, torch.Generator) else torch.Generator().manual_seed(g)
                                for g in generators[start:start + batch_size]]
            prefix = None
            if kept:
                sources = image[start:start + batch_size].to(device=device, dtype=self.vqvae.dtype)  # (B, C, R, R)
                codes = grid_to_sequence(self.vqvae.encode_to_tokens(sources), token_order_of(self.prior.config))
                prefix = codes[:, :kept * self._token_lines()[1]]  # (B, P): the first `kept` columns (or rows)
            try:
                tokens = sample_tokens(self.prior, chunk, temperature=temperature, top_k=top_k, top_p=top_p,
                                       guidance_scale=guidance_scale, generator=chunk_generators,
                                       device=device, prefix=prefix)  # (B, h, w)
            except ValueError as err:  # bad sampling settings: the user's to fix
                raise UserInputError(str(err)) from err
            if output_type == "latent":
                outputs.append(tokens.cpu())
            else:
                decoded = self.vqvae.decode_tokens(tokens.to(device))  # (B, C, R, R) ~ value_range
                outputs.append(self._colour(self._to_model_range(decoded)))  # (B, C', R, R) ~ [-1, 1], CPU float32
        stacked = torch.cat(outputs)  # (N, h, w) codes or (N, C, R, R) pixels
        public_ids = [self.user_ids[label] for label in all_labels]
        result = stacked if output_type == "latent" else self.image_processor.postprocess(stacked, output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return result, public_ids
        return VQVAETransformerPipelineOutput(images=result, user_ids=public_ids)

    def _token_lines(self) -> tuple[int, int]:
        """``(lines, codes per line)`` in the prior's reading order: token columns (column order) or rows, the unit
        :meth:`__call__` keeps from an ``image``."""
        h, w = self.prior.config.token_grid
        return (w, h) if token_order_of(self.prior.config) == "column" else (h, w)

    def _source_images(self, image, count: int, per_user: int) -> torch.Tensor | None:
        """``image`` as :meth:`__call__` takes it -> a tensor ``[count, C, R, R]`` in ``value_range`` (a tensor, or
        None, passes through to :meth:`_kept_lines`, which checks it).

        PIL images are decoded as :func:`~vqvae_transformer.data.folder.load_image_folder` decodes a training
        folder (RGB, resized to the resolution, inverted through the model's colormap, gray for one channel)
        and repeated to one per requested image: one image for all, or one per requested user.

        Raises:
            UserInputError: not PIL images, or a count that is not 1, the number of users or ``count``.
        """
        if image is None or isinstance(image, torch.Tensor):
            return image
        images = [image] if isinstance(image, PIL.Image.Image) else image
        if not isinstance(images, (list, tuple)) or not images or \
                not all(isinstance(i, PIL.Image.Image) for i in images):
            raise UserInputError(f"image must be a float tensor, a PIL image or a list of PIL images, got "
                                 f"{type(image).__name__}")
        users = count // per_user
        repeats = {1: count, users: per_user, count: 1}.get(len(images))
        if repeats is None:
            raise UserInputError(f"got {len(images)} images for {users} user(s) x {per_user} image(s) each; pass "
                                 f"one image, one per user ({users}) or one per requested image ({count})")
        resolution, colormap = int(self.config.resolution), getattr(self.config, "colormap", None)
        decoded = [decode_pil_image(i, resolution, colormap) for i in images]  # ([3, R, R] in [0, 1], is_gray)
        tensor, _ = stack_images([a for a, _ in decoded], [g for _, g in decoded],
                                 int(self.vqvae.config.in_channels))  # (len(images), C, R, R) in [-1, 1]
        low, high = self.config.value_range
        tensor = (tensor + 1.0) / 2.0 * (high - low) + low  # -> value_range
        return tensor.repeat_interleave(repeats, dim=0)  # (count, C, R, R), user-major

    def _kept_lines(self, strength: float, image: torch.Tensor | None, count: int) -> int:
        """Token columns (rows for a row-order prior) kept from ``image`` for ``strength``; 0 without an image.

        Raises:
            UserInputError: ``strength`` outside ``(0, 1]``, so small that nothing is left to write, without an
                ``image``, or an ``image`` of the wrong type or shape.
        """
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 < float(strength) <= 1.0:
            raise UserInputError(f"strength must be in (0, 1] (the share of the token grid the prior writes), got "
                                 f"{strength!r}")
        if image is None:
            if float(strength) != 1.0:
                raise UserInputError(f"strength {strength} needs an image to start from; pass image= or strength=1")
            return 0
        lines = self._token_lines()[0]
        expected = (count, self.vqvae.config.in_channels, int(self.config.resolution), int(self.config.resolution))
        if not isinstance(image, torch.Tensor) or not image.is_floating_point() or tuple(image.shape) != expected:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise UserInputError(f"image must be a float tensor of shape {expected} (one source per requested image, "
                                 f"as the first stage takes them), got {got}")
        kept = int(round((1.0 - float(strength)) * lines))
        if kept >= lines:
            raise UserInputError(f"strength {strength} keeps all {lines} token lines of the image, leaving nothing to "
                                 f"write; use a strength of at least {1 / lines:.3g}")
        return kept

    # ------------------------------------------------------------------ sharing

    def push_to_hub(self, repo_id: str, commit_message: str | None = None, private: bool | None = None,
                    token: str | None = None, create_pr: bool = False, safe_serialization: bool = True,
                    variant: str | None = None, subfolder: str | None = None, summary: dict | None = None) -> str:
        """``DiffusionPipeline.push_to_hub``: save this pipeline (with a model card) into a temporary folder and
        upload it.

        For a training output folder (with its split, ``training_summary.json`` and sample grid) prefer
        :func:`vqvae_transformer.hub.push_to_hub` on the folder itself; this method uploads the weights and
        configs only.

        Args:
            repo_id: ``org/name`` on the Hub (created if missing).
            commit_message: commit message (default :data:`vqvae_transformer.hub.DEFAULT_COMMIT_MESSAGE`).
            private: create the repo private (None: the Hub's default; ignored if the repo exists).
            token: Hub token (defaults to the stored login).
            create_pr: open a pull request with the upload instead of committing to ``main``.
            safe_serialization: save the weights as safetensors (else ``.bin``).
            variant: weights saved as ``*.<variant>.safetensors``; load them with ``from_pretrained(...,
                variant=variant)``.
            subfolder: upload into this folder of the repo (no model card then, as diffusers does).
            summary: optional figures for the model card (see :func:`vqvae_transformer.hub.write_model_card`).

        Returns:
            The commit URL (``huggingface_hub.CommitInfo``, a ``str``; ``.pr_url`` with ``create_pr``).
        """
        from .. import hub

        with tempfile.TemporaryDirectory(prefix="vqvae_transformer_push_") as tmp:
            self.save_pretrained(tmp, safe_serialization=safe_serialization, variant=variant)
            if not subfolder:
                hub.write_model_card(tmp, summary=summary, repo_id=repo_id)
            return hub.push_to_hub(tmp, repo_id, token=token, private=private, create_pr=create_pr,
                                   subfolder=subfolder, commit_message=commit_message or hub.DEFAULT_COMMIT_MESSAGE)


def _describe_ids(ids: Sequence[int]) -> str:
    """``1..31`` for a contiguous run, else the list."""
    ids = list(ids)
    if ids and ids == list(range(ids[0], ids[0] + len(ids))) and len(ids) > 2:
        return f"{ids[0]}..{ids[-1]}"
    return str(ids)
