"""The validation run: real data + generated images -> metrics (docs/DESIGN.md §4) -> JSON, Markdown and figures.

``run_validation`` loads the data a model was trained on (or another real folder with its own seeded split),
the generated ``ID_<k>`` folders, trains (or reuses) the judge, computes every metric, compares them with the
thresholds and writes ``<output_dir>/validation_report.json``, ``validation_report.md`` and ``figures/*.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from ..atomic import write_text_atomic
from ..data import SpectrogramData, load_image_folder, scan_user_folders, stratified_split
from ..data.folder import DECODE_ERRORS
from ..data.provenance import DATA_INFO_FILE, load_model_data
from ..errors import UserInputError
from ..figures import plt, save_figure, save_labelled_grid, to_unit
from ..layout import MODEL_INDEX, VQVAE_FOLDER
from ..models.first_stage import load_first_stage
from . import metrics as M
from .judge import DEFAULT_EPOCHS, Judge, accuracy, features, load_or_train_judge, predict
from ..models.reconstruction import tokenizer_metrics_and_reconstructions

logger = logging.getLogger(__name__)

REPORT_JSON = "validation_report.json"
REPORT_MD = "validation_report.md"
FIGURE_DIR = "figures"
JUDGE_DIR = "judge"
SAMPLES_PER_ROW = 4  # real and generated images per user in the sample figure
MAX_SAMPLE_ROWS = 32
NEIGHBOUR_PAIRS = 8


@dataclasses.dataclass
class Thresholds:
    """Pass/fail limits of a validation run (CLI flags of the same names override them)."""

    min_real_accuracy: float = 0.90  # the judge itself must be good enough to trust the other figures
    min_gan_test_ratio: float = 0.80  # gan_test_accuracy / real_test_accuracy
    min_cas_ratio: float = 0.70  # cas_accuracy / real_test_accuracy
    max_fid_ratio: float = 3.0  # domain_fid / domain_fid_real
    max_memorization: float = 0.05  # memorization_rate
    min_diversity_ratio: float = 0.7
    max_diversity_ratio: float = 1.3
    min_codebook_usage: float = 0.90


# ----------------------------------------------------------------------------------------------------------
# Inputs


@dataclasses.dataclass
class RealData:
    """Real images with the split the judge is trained and tested on."""

    data: SpectrogramData
    train_idx: list[int]
    val_idx: list[int]
    split_source: str


def model_facts(model_dir: str | Path) -> dict:
    """User ids, resolution, channels and colormap (``"none"`` when absent) of a trained model folder.

    Read from ``model_index.json`` (the pipeline), else ``data_info.json``, else the first stage's config.

    Raises:
        UserInputError: the folder does not exist or says nothing about its users.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserInputError(f"model folder {str(model_dir)!r} does not exist; train one with train_main.py or "
                             "pass --model_dir")
    facts: dict[str, Any] = {}
    for name in (MODEL_INDEX, DATA_INFO_FILE, f"{VQVAE_FOLDER}/config.json"):
        record = _read_json(model_dir / name)
        if name == "vqvae/config.json":
            record = {"resolution": record.get("sample_size"), "channels": record.get("in_channels")}
        for key in ("user_ids", "resolution", "channels", "colormap"):
            if facts.get(key) is None and record.get(key) is not None:
                facts[key] = record[key]
    if not facts.get("user_ids"):
        raise UserInputError(f"{model_dir} has no model_index.json or {DATA_INFO_FILE} naming its users; point "
                             "--model_dir to a folder written by train_main.py")
    if facts.get("resolution") is None or facts.get("channels") is None:
        raise UserInputError(f"{model_dir} does not say its resolution and channels (no model_index.json, "
                             f"{DATA_INFO_FILE} or vqvae/config.json); point --model_dir to a trained model")
    facts["user_ids"] = [int(u) for u in facts["user_ids"]]
    facts["colormap"] = facts.get("colormap") or "none"  # older folders: images were read as RGB
    return facts


def _read_json(path: Path) -> dict:
    """The JSON object in ``path``, or ``{}`` when the file is absent (UserInputError when unreadable)."""
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserInputError(f"{path} cannot be read ({err}); the model folder is damaged, retrain it") from None
    return record if isinstance(record, dict) else {}


def load_real_data(model_dir: str | Path, facts: dict, real_data_dir: str | Path | None, seed: int,
                   val_fraction: float) -> RealData:
    """The model's own data and saved split, or ``real_data_dir`` with a seeded stratified split.

    Args:
        model_dir: the trained model folder.
        facts: :func:`model_facts` of it (resolution and channels for ``real_data_dir``).
        real_data_dir: another folder of ``ID_<k>`` sub-folders, or None.
        seed: seed of the split of ``real_data_dir``.
        val_fraction: validation share of that split.

    Returns:
        A :class:`RealData`.
    """
    if real_data_dir is None:
        data, train_idx, val_idx = load_model_data(model_dir)
        return RealData(data, train_idx, val_idx, f"{Path(model_dir) / 'split.json'} (the training split)")
    data = load_image_folder(real_data_dir, int(facts["resolution"]), channels=int(facts["channels"]),
                             colormap=facts["colormap"])  # read as the model's training data was
    train_idx, val_idx = stratified_split(data.labels, val_fraction, seed, user_ids=data.user_ids)
    return RealData(data, train_idx, val_idx, f"stratified split of {real_data_dir} (seed {seed}, "
                                              f"val_fraction {val_fraction})")


def load_generated(generated_dir: str | Path, real: SpectrogramData, known_ids: Sequence[int]) -> SpectrogramData:
    """Generated ``ID_<k>`` folders, checked against the model and relabelled with the real data's labels.

    Args:
        generated_dir: folder of generated ``ID_<k>/*.png``.
        real: the real data (its resolution, channels and id map).
        known_ids: the public ids the model was trained on.

    Returns:
        The generated images ``[M, C, R, R]`` with ``labels`` indexing ``real.user_ids``.

    Raises:
        UserInputError: missing folder, ids the model or the real data do not know, images whose size or
            channels differ from the data's.
    """
    files = scan_user_folders(generated_dir)
    unknown = sorted(set(files) - set(known_ids))
    if unknown:
        raise UserInputError(f"{generated_dir} holds folders for user ids {unknown} that the model does not know "
                             f"(model ids: {_short(known_ids)}); remove them or pass the right --model_dir")
    missing_real = sorted(set(files) - set(real.user_ids))
    if missing_real:
        raise UserInputError(f"the real data ({real.source}) has no images of generated user ids {missing_real}; "
                             "pass a --real_data_dir that holds those users")
    _check_image_sizes(files, real.resolution)
    generated = load_image_folder(generated_dir, real.resolution, colormap=real.colormap or "none")
    if generated.channels != real.channels:
        raise UserInputError(f"generated images in {generated_dir} have {generated.channels} channel(s) but the "
                             f"data has {real.channels}; generate them with this model")
    labels = torch.tensor([real.id_to_label(generated.user_ids[i]) for i in generated.labels.tolist()],
                          dtype=torch.long)
    return dataclasses.replace(generated, labels=labels, user_ids=list(real.user_ids))


def _check_image_sizes(files: dict[int, list[Path]], resolution: int) -> None:
    """UserInputError naming the first generated image whose size is not ``resolution``×``resolution``."""
    wrong: list[str] = []
    first = ""
    for paths in files.values():
        for path in paths:
            try:
                with Image.open(path) as image:
                    size = image.size
            except DECODE_ERRORS as err:
                raise UserInputError(f"cannot read generated image {path} ({err}); regenerate it") from None
            if size != (resolution, resolution):
                wrong.append(str(path))
                first = first or f"{path} is {size[0]}x{size[1]}"
    if wrong:
        raise UserInputError(f"{len(wrong)} generated image(s) do not match the model's {resolution}x{resolution} "
                             f"resolution ({first}); generate them with this model")


def _short(values: Sequence[int], limit: int = 8) -> str:
    values = list(values)
    return ", ".join(map(str, values[:limit])) + (f", ... (+{len(values) - limit} more)" if len(values) > limit else "")


# ----------------------------------------------------------------------------------------------------------
# Metrics


def _clean(value: Any) -> Any:
    """Floats that are NaN/inf become None (JSON has no NaN); tensors become lists."""
    if torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def compute_metrics(judge: Judge, real: RealData, generated: SpectrogramData, target_label: int | None,
                    cas_epochs: int, seed: int) -> tuple[dict, dict, dict]:
    """Every judge-based metric of §4, overall and per user.

    Args:
        judge: trained on ``real``'s training split.
        real: the real data and split.
        generated: generated images labelled with ``real``'s labels.
        target_label: restrict to this 0-based label, or None for every user.
        cas_epochs: training epochs of the CAS classifier.
        seed: seed of the CAS classifier and the halves of ``domain_fid_real``.

    Returns:
        ``(metrics, reasons for unmeasured metrics, extras)`` where extras hold per-label values, confusion
        matrices, memorization details and features for the figures.
    """
    data = real.data
    train_x, train_y = data.images[real.train_idx], data.labels[real.train_idx]  # [N, C, R, R], [N]
    val_x, val_y = data.images[real.val_idx], data.labels[real.val_idx]  # [V, C, R, R], [V]
    gen_x, gen_y = generated.images, generated.labels  # [M, C, R, R], [M]
    if target_label is not None:
        keep_val, keep_gen = val_y == target_label, gen_y == target_label
        val_scope_x, val_scope_y = val_x[keep_val], val_y[keep_val]
        gen_x, gen_y = gen_x[keep_gen], gen_y[keep_gen]
    else:
        val_scope_x, val_scope_y = val_x, val_y
    k = data.num_users
    reasons: dict[str, str] = {}

    pred_val = predict(judge, val_scope_x)  # [V']
    pred_gen = predict(judge, gen_x)  # [M']
    out: dict[str, Any] = {
        "real_test_accuracy": M.accuracy(pred_val, val_scope_y),
        "gan_test_accuracy": M.accuracy(pred_gen, gen_y),
    }
    cas, cas_per_label, cas_correct = _cas(gen_x, gen_y, val_x, val_y, k, target_label, cas_epochs, seed, reasons)
    out["cas_accuracy"] = cas

    f_train, f_val, f_gen = features(judge, train_x), features(judge, val_x), features(judge, gen_x)  # [*, F]
    f_val_scope = f_val[val_y == target_label] if target_label is not None else f_val
    out["domain_fid"], out["domain_fid_real"] = _fids(judge, val_scope_x, val_scope_y, gen_x, seed, reasons)
    memo = M.memorization_rate(f_gen, f_train, f_val)
    out["memorization_rate"] = memo.rate
    out["diversity_ratio"], diversity_per_label = M.diversity_ratio(f_gen, gen_y, f_val_scope, val_scope_y)
    if out["diversity_ratio"] is None:
        reasons["diversity_ratio"] = "no user has at least 2 generated and 2 real validation images"

    out["gan_test_ratio"] = _ratio(out["gan_test_accuracy"], out["real_test_accuracy"])
    out["cas_ratio"] = _ratio(out["cas_accuracy"], out["real_test_accuracy"])
    out["fid_ratio"] = _ratio(out["domain_fid"], out["domain_fid_real"])
    intervals = _intervals(pred_val == val_scope_y, val_scope_y, pred_gen == gen_y, gen_y, cas_correct, f_gen,
                           f_val_scope, seed, reasons)
    out["domain_kid"] = intervals["domain_kid"]["estimate"] if "domain_kid" in intervals else None
    out["domain_kid_real"] = intervals["domain_kid_real"]["estimate"] if "domain_kid_real" in intervals else None
    extras = {
        "real_per_label": M.per_user_accuracy(pred_val, val_scope_y, k),
        "gan_per_label": M.per_user_accuracy(pred_gen, gen_y, k),
        "cas_per_label": cas_per_label,
        "intervals": intervals,
        "per_label_counts": {"real": _per_label_counts(pred_val == val_scope_y, val_scope_y, k),
                             "generated": _per_label_counts(pred_gen == gen_y, gen_y, k),
                             "cas": (_per_label_counts(cas_correct[0], cas_correct[1], k)
                                     if cas_correct is not None else [None] * k)},
        "diversity_per_label": diversity_per_label,
        "confusion_generated": M.confusion_matrix(pred_gen, gen_y, k),
        "confusion_real": M.confusion_matrix(pred_val, val_scope_y, k),
        "memorization": memo,
        "gen_images": gen_x, "gen_labels": gen_y, "val_images": val_scope_x, "val_labels": val_scope_y,
        "train_images": train_x,
        "counts": {"train": int(train_x.shape[0]), "validation": int(val_scope_x.shape[0]),
                   "generated": int(gen_x.shape[0])},
    }
    return {key: _clean(value) for key, value in out.items()}, reasons, extras


def _cas(gen_x: torch.Tensor, gen_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, k: int,
         target_label: int | None, epochs: int, seed: int,
         reasons: dict) -> tuple[float | None, list, tuple[torch.Tensor, torch.Tensor] | None]:
    """CAS over the users that have generated images (None with a reason when it is meaningless).

    Returns:
        ``(accuracy, per-label accuracies, (correct [V'] bool, labels [V']) of the real test images or None)``.
    """
    users = torch.unique(gen_y)
    if target_label is not None:
        reasons["cas_accuracy"] = ("one target user: a classifier trained on generated images of a single user "
                                   "is constant, so CAS is meaningless")
        return None, [None] * k, None
    if users.numel() < 2 or gen_x.shape[0] < 2:
        reasons["cas_accuracy"] = "generated images cover fewer than 2 users; CAS needs at least 2 classes"
        return None, [None] * k, None
    keep = torch.isin(val_y, users)  # test only on users the generator produced
    accuracy, classifier = M.cas_accuracy(gen_x, gen_y, val_x[keep], val_y[keep], k, epochs=epochs, seed=seed)
    predicted = predict(classifier, val_x[keep])  # [V']
    per_label = M.per_user_accuracy(predicted, val_y[keep], k)
    return accuracy, per_label, (predicted == val_y[keep], val_y[keep])


INTERVAL_METRICS = ("real_test_accuracy", "gan_test_accuracy", "cas_accuracy", "gan_test_ratio", "cas_ratio",
                    "fid_ratio", "domain_kid", "domain_kid_real")
"""Metrics whose report entries get a confidence interval (``report["intervals"]``)."""


def _intervals(real_correct: torch.Tensor, real_y: torch.Tensor, gen_correct: torch.Tensor, gen_y: torch.Tensor,
               cas: tuple[torch.Tensor, torch.Tensor] | None, f_gen: torch.Tensor, f_val: torch.Tensor, seed: int,
               reasons: dict) -> dict[str, dict]:
    """Confidence intervals of :data:`INTERVAL_METRICS` (``{metric: Interval.as_dict() + kid_std}``).

    Thresholds stay judged on the point estimates; these only show how far a figure could move with another
    sample of ~5 images per user. Metrics that cannot be measured are left out (their reason is in ``reasons``).
    """
    out = {"real_test_accuracy": M.bootstrap_accuracy_ci(real_correct, real_y, seed=seed),
           "gan_test_accuracy": M.bootstrap_accuracy_ci(gen_correct, gen_y, seed=seed),
           "gan_test_ratio": M.bootstrap_ratio_ci(gen_correct, gen_y, real_correct, real_y, paired=False,
                                                  seed=seed)}
    if cas is not None:
        cas_correct, cas_y = cas
        out["cas_accuracy"] = M.bootstrap_accuracy_ci(cas_correct, cas_y, seed=seed)
        # Paired: the judge's correctness on the very images the CAS classifier was tested on.
        tested = torch.isin(real_y, torch.unique(cas_y))
        if bool((real_y[tested] == cas_y).all()):
            out["cas_ratio"] = M.bootstrap_ratio_ci(cas_correct, cas_y, real_correct[tested], cas_y, paired=True,
                                                    seed=seed)
        else:
            raise RuntimeError("CAS test images are not a subset of the real validation images in order")
    if f_gen.shape[0] >= 2 and f_val.shape[0] >= 2:
        out["fid_ratio"] = M.bootstrap_fid_ratio_ci(f_gen, gen_y, f_val, real_y, seed=seed)
        kid, kid_std = M.kernel_distance(f_gen, f_val, seed=seed)
        out["domain_kid"] = kid
        result = {name: interval.as_dict() for name, interval in out.items()}
        result["domain_kid"]["std"] = kid_std
    else:
        reasons["domain_kid"] = f"needs 2+ images per set ({f_val.shape[0]} real, {f_gen.shape[0]} generated)"
        result = {name: interval.as_dict() for name, interval in out.items()}
    half_a, _ = M.split_in_halves(real_y, seed)
    if half_a.numel() >= 2:
        kid_real, kid_real_std = M.kernel_distance_real(f_val, real_y, seed=seed)
        result["domain_kid_real"] = {**kid_real.as_dict(), "std": kid_real_std}
    else:
        reasons["domain_kid_real"] = f"{f_val.shape[0]} real validation images cannot form two halves of 2+"
    return {name: {key: _clean(value) for key, value in entry.items()} for name, entry in result.items()}


def _per_label_counts(correct: torch.Tensor, labels: torch.Tensor, k: int) -> list[tuple[int, int] | None]:
    """``(right, tested)`` per label ``[k]`` (None for labels without images), for Wilson intervals."""
    counts: list[tuple[int, int] | None] = []
    for label in range(k):
        mask = labels == label
        counts.append((int(correct[mask].sum()), int(mask.sum())) if bool(mask.any()) else None)
    return counts


def _fids(judge: Judge, val_x: torch.Tensor, val_y: torch.Tensor, gen_x: torch.Tensor, seed: int,
          reasons: dict) -> tuple[float | None, float | None]:
    """``(domain_fid, domain_fid_real)``; None with a reason when a set has fewer than 2 images."""
    fid = fid_real = None
    if val_x.shape[0] >= 2 and gen_x.shape[0] >= 2:
        fid = M.domain_fid(judge, val_x, gen_x)
    else:
        reasons["domain_fid"] = f"needs 2+ images per set ({val_x.shape[0]} real, {gen_x.shape[0]} generated)"
    half_a, _ = M.split_in_halves(val_y, seed)
    if half_a.numel() >= 2:
        fid_real = M.domain_fid_real(judge, val_x, val_y, seed)
    else:
        reasons["domain_fid_real"] = f"{val_x.shape[0]} real validation images cannot form two halves of 2+"
    return fid, fid_real


def first_stage_metrics(model_dir: str | Path, val_images: torch.Tensor, val_labels: torch.Tensor, judge: Judge,
                        reasons: dict) -> dict:
    """PSNR, SSIM, codebook statistics, LPIPS and the judge's accuracy on reconstructions of the validation images.

    ``reconstruction_test_accuracy`` is the ceiling the tokenizer puts on ``gan_test_accuracy``: what the judge
    still recognises after images pass through the tokens. ``reconstruction_domain_fid`` (reconstructions vs the
    images they reconstruct, in the judge's feature space) is the tokenizer's share of ``domain_fid``.
    """
    first_stage = load_first_stage(Path(model_dir) / VQVAE_FOLDER).eval()
    out, recon = tokenizer_metrics_and_reconstructions(first_stage, val_images)  # recon: (N, C, R, R)
    out["reconstruction_test_accuracy"] = accuracy(predict(judge, recon), val_labels)
    out["reconstruction_domain_fid"] = M.domain_fid(judge, val_images, recon) if val_images.shape[0] >= 2 else None
    if out["reconstruction_domain_fid"] is None:
        reasons["reconstruction_domain_fid"] = f"needs 2+ validation images, got {val_images.shape[0]}"
    lpips_value, lpips_reason = M.lpips_distance(val_images, recon)
    out["lpips"] = lpips_value
    if lpips_value is None:
        reasons["lpips"] = lpips_reason
    return out


# ----------------------------------------------------------------------------------------------------------
# Thresholds


def check_thresholds(values: dict, thresholds: Thresholds) -> list[dict]:
    """One check per threshold: ``{name, metric, value, limit, passed}``; ``passed`` is None when unmeasured."""
    t = thresholds
    specs = [
        ("min_real_accuracy", "real_test_accuracy", ">=", t.min_real_accuracy),
        ("min_gan_test_ratio", "gan_test_ratio", ">=", t.min_gan_test_ratio),
        ("min_cas_ratio", "cas_ratio", ">=", t.min_cas_ratio),
        ("max_fid_ratio", "fid_ratio", "<=", t.max_fid_ratio),
        ("max_memorization", "memorization_rate", "<=", t.max_memorization),
        ("min_diversity_ratio", "diversity_ratio", ">=", t.min_diversity_ratio),
        ("max_diversity_ratio", "diversity_ratio", "<=", t.max_diversity_ratio),
        ("min_codebook_usage", "codebook_usage", ">=", t.min_codebook_usage),
    ]
    checks = []
    for name, metric, op, limit in specs:
        value = values.get(metric)
        passed = None if value is None else (value >= limit if op == ">=" else value <= limit)
        checks.append({"name": name, "metric": metric, "value": value, "op": op, "limit": limit, "passed": passed})
    return checks


# ----------------------------------------------------------------------------------------------------------
# The run


def run_validation(
    model_dir: str | Path,
    generated_dir: str | Path,
    real_data_dir: str | Path | None = None,
    target_user_id: int | None = None,
    output_dir: str | Path = "validation",
    thresholds: Thresholds | None = None,
    seed: int = 0,
    judge_epochs: int = DEFAULT_EPOCHS,
    cas_epochs: int | None = None,
    val_fraction: float = 0.2,
    use_judge_cache: bool = True,
) -> dict:
    """Validate generated images against the real data and write the report.

    Args:
        model_dir: the trained model folder (``model_index.json``, ``vqvae/``, ``data_info.json``, ``split.json``).
        generated_dir: generated ``ID_<k>/*.png``.
        real_data_dir: another real ``ID_<k>`` folder (gets its own seeded stratified split); default the
            model's own data and split.
        target_user_id: public (1-based) id to restrict the report to; the judge is still trained on all users.
        output_dir: where the report, figures and the cached judge go.
        thresholds: pass/fail limits (default :class:`Thresholds`).
        seed: seed of the judge, the CAS classifier, the FID halves and the split of ``real_data_dir``.
        judge_epochs: training epochs of the judge.
        cas_epochs: training epochs of the CAS classifier; default: as many optimisation steps as the judge.
        val_fraction: validation share when splitting ``real_data_dir``.
        use_judge_cache: reuse ``<output_dir>/judge`` when its key matches.

    Returns:
        The report dict (also written to ``validation_report.json``): the §4 metrics at top level, ratios,
        ``per_user``, ``checks``, ``thresholds``, ``passed``, ``failed``, ``skipped``, ``reasons``, ``settings``,
        ``seconds``.

    Raises:
        UserInputError: missing folders, unknown ids, size or channel mismatches, an unknown target user.
    """
    start = time.perf_counter()
    thresholds = thresholds or Thresholds()
    output_dir = Path(output_dir)
    facts = model_facts(model_dir)
    if not Path(generated_dir).is_dir():
        raise UserInputError(f"generated images folder {str(generated_dir)!r} does not exist; run generate_main.py "
                             "or pass --generated_data_dir")
    real = load_real_data(model_dir, facts, real_data_dir, seed, val_fraction)
    generated = load_generated(generated_dir, real.data, facts["user_ids"])
    target_label = _target_label(target_user_id, generated, real.data)

    judge = train_or_load_judge(real, output_dir, judge_epochs, seed, use_judge_cache)
    if cas_epochs is None:  # same optimisation budget as the judge
        cas_epochs = max(1, round(judge_epochs * len(real.train_idx) / max(len(generated), 1)))
    values, reasons, extras = compute_metrics(judge, real, generated, target_label, cas_epochs, seed)
    values.update(first_stage_metrics(model_dir, real.data.images[real.val_idx], real.data.labels[real.val_idx],
                                      judge, reasons))

    checks = check_thresholds(values, thresholds)
    report = _assemble(values, reasons, extras, checks, thresholds, real, generated, judge, target_user_id,
                       dict(model_dir=str(model_dir), generated_dir=str(generated_dir),
                            real_data_dir=None if real_data_dir is None else str(real_data_dir), seed=seed,
                            judge_epochs=judge_epochs, cas_epochs=cas_epochs, val_fraction=val_fraction))
    report["figures"] = write_figures(output_dir / FIGURE_DIR, report, extras, real.data)
    report["seconds"] = round(time.perf_counter() - start, 2)
    write_report(output_dir, report)
    return report


def _target_label(target_user_id: int | None, generated: SpectrogramData, data: SpectrogramData) -> int | None:
    """0-based label of the target user (UserInputError when it has no generated images)."""
    if target_user_id is None:
        return None
    label = data.id_to_label(int(target_user_id))
    if not bool((generated.labels == label).any()):
        raise UserInputError(f"--target_user_id {target_user_id} has no generated images in {generated.source}; "
                             "generate images for that user first")
    return label


def train_or_load_judge(real: RealData, output_dir: Path, epochs: int, seed: int, use_cache: bool) -> Judge:
    """Train the judge on the real training split, or reuse the cached one."""
    data = real.data
    return load_or_train_judge(
        data.images[real.train_idx], data.labels[real.train_idx], data.num_users,
        paths=[data.paths[i] for i in real.train_idx], val_paths=[data.paths[i] for i in real.val_idx],
        cache_dir=output_dir / JUDGE_DIR if use_cache else None, epochs=epochs, seed=seed,
    )


def _wilson(counts: tuple[int, int] | None) -> list[float] | None:
    """Wilson 95 % interval ``[low, high]`` of a per-user accuracy from ``(right, tested)``, None without images."""
    if counts is None:
        return None
    low, high = M.wilson_interval(*counts)
    return [low, high]


def _assemble(values: dict, reasons: dict, extras: dict, checks: list[dict], thresholds: Thresholds,
              real: RealData, generated: SpectrogramData, judge: Judge, target_user_id: int | None,
              settings: dict) -> dict:
    """The JSON report: metrics at top level, then per-user figures, checks and settings."""
    ids = real.data.user_ids
    in_scope = sorted(set(extras["gen_labels"].tolist()) | set(extras["val_labels"].tolist()))
    memo = extras["memorization"]
    per_user = {}
    for label in in_scope:
        mask = extras["gen_labels"] == label
        per_user[str(ids[label])] = {
            "real_test_accuracy": extras["real_per_label"][label],
            "gan_test_accuracy": extras["gan_per_label"][label],
            "cas_accuracy": extras["cas_per_label"][label],
            "diversity_ratio": extras["diversity_per_label"].get(label),
            "memorization_rate": float(memo.flagged[mask].double().mean()) if bool(mask.any()) else None,
            "intervals": {key: _wilson(extras["per_label_counts"][name][label]) for key, name in (
                ("real_test_accuracy", "real"), ("gan_test_accuracy", "generated"), ("cas_accuracy", "cas"))},
            "num_validation": int((extras["val_labels"] == label).sum()),
            "num_generated": int(mask.sum()),
        }
    failed = [c["name"] for c in checks if c["passed"] is False]
    report = {key: values.get(key) for key in (
        "real_test_accuracy", "gan_test_accuracy", "cas_accuracy", "domain_fid", "domain_fid_real",
        "domain_kid", "domain_kid_real", "memorization_rate", "diversity_ratio", "codebook_usage",
        "codebook_perplexity", "normalized_entropy",
        "psnr", "ssim", "lpips", "reconstruction_test_accuracy", "reconstruction_domain_fid", "gan_test_ratio",
        "cas_ratio", "fid_ratio")}
    report.update(
        passed=not failed,
        failed=failed,
        skipped=[c["name"] for c in checks if c["passed"] is None],
        checks=checks,
        thresholds=dataclasses.asdict(thresholds),
        reasons=reasons,
        intervals=extras["intervals"],
        per_user=per_user,
        confusion_matrix={"rows": "intended user (generated images)", "columns": "judge's prediction",
                          "user_ids": ids, "generated": extras["confusion_generated"].tolist(),
                          "real_validation": extras["confusion_real"].tolist()},
        memorization={"feature_space": "judge penultimate layer, L2", "percentile": M.MEMORIZATION_PERCENTILE,
                      "threshold": memo.threshold, "num_flagged": int(memo.flagged.sum())},
        judge={"from_cache": judge.from_cache, "train_seconds": round(judge.train_seconds, 2),
               "train_accuracy": judge.train_accuracy, "epochs_run": judge.epochs_run, **judge.settings},
        counts=extras["counts"],
        settings={**settings, "target_user_id": target_user_id, "real_data_source": real.data.source,
                  "split": real.split_source, "resolution": real.data.resolution, "channels": real.data.channels,
                  "num_users": real.data.num_users,
                  "scope": f"user {target_user_id} only" if target_user_id is not None else "all users",
                  "tokenizer_scope": "all users' validation images (codebook usage is a property of the set)"},
    )
    return report


# ----------------------------------------------------------------------------------------------------------
# Figures


def write_figures(folder: Path, report: dict, extras: dict, data: SpectrogramData) -> dict[str, str]:
    """Per-user accuracy bars, confusion matrices, real-vs-generated rows, nearest-neighbour pairs.

    Returns:
        ``{figure name: path relative to the report folder}``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = {
        "per_user_accuracy": _accuracy_bars(folder / "per_user_accuracy.png", report["per_user"]),
        "confusion_matrix": _confusion_figure(folder / "confusion_matrix.png", extras, data.user_ids),
        "samples": _samples_figure(folder / "real_vs_generated.png", extras, data.user_ids),
        "nearest_neighbours": _neighbour_figure(folder / "nearest_neighbours.png", extras),
    }
    return {name: f"{FIGURE_DIR}/{path.name}" for name, path in written.items() if path is not None}


def _accuracy_bars(path: Path, per_user: dict) -> Path:
    ids = list(per_user)
    x = torch.arange(len(ids)).float()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(ids) + 1.5), 3))
    for offset, key, label in ((-0.27, "real_test_accuracy", "real (judge)"),
                               (0.0, "gan_test_accuracy", "generated (judge)"),
                               (0.27, "cas_accuracy", "real (CAS classifier)")):
        heights = [per_user[i][key] if per_user[i][key] is not None else 0.0 for i in ids]
        ax.bar((x + offset).tolist(), heights, width=0.27, label=label)
    ax.set_xticks(x.tolist(), ids, fontsize=7)
    ax.set_xlabel("user id")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    return save_figure(fig, path)


def _confusion_figure(path: Path, extras: dict, user_ids: Sequence[int]) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, key, title in ((axes[0], "confusion_generated", "generated images (row: intended user)"),
                           (axes[1], "confusion_real", "real validation images (row: true user)")):
        matrix = extras[key].float()
        rows = matrix.sum(1, keepdim=True).clamp(min=1)
        image = ax.imshow((matrix / rows).numpy(), cmap="Blues", vmin=0, vmax=1)
        ticks = list(range(len(user_ids)))
        step = max(1, len(ticks) // 16)
        ax.set_xticks(ticks[::step], [str(u) for u in user_ids][::step], fontsize=6)
        ax.set_yticks(ticks[::step], [str(u) for u in user_ids][::step], fontsize=6)
        ax.set_xlabel("judge's prediction")
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=axes, fraction=0.03, label="share of the row")
    return save_figure(fig, path)


def _samples_figure(path: Path, extras: dict, user_ids: Sequence[int]) -> Path | None:
    return real_vs_generated_figure(path, extras["val_images"], extras["val_labels"], extras["gen_images"],
                                    extras["gen_labels"], user_ids)


def real_vs_generated_figure(path: Path, real_images: torch.Tensor, real_labels: torch.Tensor,
                             gen_images: torch.Tensor, gen_labels: torch.Tensor, user_ids: Sequence[int],
                             max_rows: int = MAX_SAMPLE_ROWS) -> Path | None:
    """One row per generated user (at most ``max_rows``): real images on the left, generated on the right.

    Images are ``[N, C, R, R]`` in [-1, 1]; labels index ``user_ids``. Returns None when nothing was generated.
    """
    labels = sorted(set(gen_labels.tolist()))[:max_rows]
    if not labels:
        return None
    rows, names = [], []
    for label in labels:
        real = real_images[real_labels == label][:SAMPLES_PER_ROW]
        fake = gen_images[gen_labels == label][:SAMPLES_PER_ROW]
        rows += [_pad(to_unit(real)), _pad(to_unit(fake))]
        names.append(f"ID_{user_ids[label]}")
    grid = torch.cat(rows)  # [rows * 2 * SAMPLES_PER_ROW, C, R, R]
    return save_labelled_grid(grid, names, 2 * SAMPLES_PER_ROW, path,
                              title=f"left {SAMPLES_PER_ROW}: real validation, right {SAMPLES_PER_ROW}: generated")


def _pad(images: torch.Tensor) -> torch.Tensor:
    """Pad ``[n, C, R, R]`` in [0, 1] with white images to ``SAMPLES_PER_ROW``."""
    missing = SAMPLES_PER_ROW - images.shape[0]
    if missing <= 0:
        return images
    return torch.cat([images, torch.ones(missing, *images.shape[1:])])


def _neighbour_figure(path: Path, extras: dict) -> Path | None:
    memo = extras["memorization"]
    if memo.distances.numel() == 0:
        return None
    order = torch.argsort(memo.distances)[:NEIGHBOUR_PAIRS]  # closest generated images first
    generated = to_unit(extras["gen_images"][order])
    neighbours = to_unit(extras["train_images"][memo.neighbours[order]])
    distances = ", ".join(f"{d:.2f}" for d in memo.distances[order].tolist())
    return save_labelled_grid(torch.cat([generated, neighbours]), ["generated", "nearest train"], order.numel(),
                              path, title=f"closest generated images; distances {distances} "
                                          f"(threshold {memo.threshold:.2f})")


# ----------------------------------------------------------------------------------------------------------
# Writing


def write_report(output_dir: Path, report: dict) -> tuple[Path, Path]:
    """Write ``validation_report.json`` and ``validation_report.md`` (atomically)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = _write_text(output_dir / REPORT_JSON, json.dumps(report, indent=1, default=_clean))
    md_path = _write_text(output_dir / REPORT_MD, render_markdown(report))
    logger.info("Wrote %s and %s", json_path, md_path)
    return json_path, md_path


def _write_text(path: Path, text: str) -> Path:
    return write_text_atomic(path, text + "\n")


_METRIC_TEXT = [
    ("real_test_accuracy", "Judge accuracy on real validation images: how well a small CNN trained on the real "
                           "training images tells users apart. Every judge-based figure is only as good as this."),
    ("gan_test_accuracy", "Judge accuracy on generated images, labelled by the user they were generated for "
                          "(identity fidelity)."),
    ("cas_accuracy", "A fresh classifier of the judge's architecture trained on generated images only, tested "
                     "on the real validation images (do the generated images carry each user's identity?)."),
    ("domain_fid", "Fréchet distance between generated and real validation images in the judge's feature "
                   "space (lower is better)."),
    ("domain_fid_real", "The same distance between two disjoint halves of the real validation images: the "
                        "floor domain_fid is compared with (each half is smaller, so this floor is noisier)."),
    ("domain_kid", "Kernel distance (unbiased MMD², kernel (x·y/d + 1)³, mean over random subsets) between "
                   "generated and real validation images in the judge's feature space; ~0 (can be < 0) when alike."),
    ("domain_kid_real", "The same kernel distance between the two halves used by domain_fid_real: its floor "
                        "(unbiased, so it does not grow as the halves shrink, unlike the FID floor)."),
    ("memorization_rate", "Share of generated images whose nearest training image (L2 in the judge's feature "
                          "space) is as close as the closest 1 % of real validation images are to theirs; "
                          "about 0.01 for a generator that does not copy, near 1 for one that does."),
    ("diversity_ratio", "Mean pairwise feature distance among a user's generated images over the same among "
                        "that user's real validation images, averaged over users (1 = as diverse as real, "
                        "0 = the same image repeated)."),
    ("codebook_usage", "Share of the tokenizer's codes used when encoding the real validation images."),
    ("codebook_perplexity", "exp(entropy) of the code distribution on the validation images."),
    ("normalized_entropy", "Entropy of that distribution over log K (1 = uniform)."),
    ("psnr", "Tokenizer reconstruction PSNR on the validation images (dB, images in [0, 1])."),
    ("ssim", "Tokenizer reconstruction SSIM on the validation images."),
    ("lpips", "Pretrained LPIPS between validation images and their reconstructions (lower is better)."),
    ("reconstruction_test_accuracy", "Judge accuracy on the tokenizer's reconstructions of the real validation "
                                     "images: the ceiling the tokenizer puts on gan_test_accuracy."),
    ("reconstruction_domain_fid", "domain_fid between the real validation images and their reconstructions: the "
                                  "tokenizer's share of domain_fid."),
]


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _fmt_ci(value: Any, interval: Sequence[float | None] | None) -> str:
    """``"0.93 [0.89, 0.96]"``, or just the value when there is no interval."""
    if value is None or not interval or interval[0] is None or interval[1] is None:
        return _fmt(value)
    return f"{_fmt(value)} [{_fmt(float(interval[0]))}, {_fmt(float(interval[1]))}]"


def _report_ci(report: dict, key: str) -> list | None:
    """``[ci_low, ci_high]`` of ``key`` in ``report["intervals"]``, or None."""
    entry = report.get("intervals", {}).get(key)
    return None if entry is None else [entry["ci_low"], entry["ci_high"]]


def render_markdown(report: dict) -> str:
    """The human-readable report: verdict, threshold table, metric table with meanings, per-user table, figures."""
    s = report["settings"]
    lines = [
        "# Validation report",
        "",
        f"**Verdict: {'PASSED' if report['passed'] else 'FAILED'}**"
        + (f" — failed: {', '.join(report['failed'])}" if report["failed"] else ""),
        "",
        f"Model `{s['model_dir']}`, generated images `{s['generated_dir']}`, real data `{s['real_data_source']}` "
        f"({s['resolution']} px, {s['channels']} channel(s), {s['num_users']} users), split: {s['split']}. "
        f"Scope: {s['scope']}. Images: {report['counts']['train']} real training, {report['counts']['validation']} "
        f"real validation, {report['counts']['generated']} generated. Seed {s['seed']}, {report['seconds']} s.",
        "",
        "## Thresholds",
        "",
        "| check | metric | value | limit | result |",
        "|---|---|---|---|---|",
    ]
    for c in report["checks"]:
        result = {True: "pass", False: "**FAIL**", None: "not measured"}[c["passed"]]
        lines.append(f"| {c['name']} | {c['metric']} | {_fmt_ci(c['value'], _report_ci(report, c['metric']))} | "
                     f"{c['op']} {c['limit']} | {result} |")
    lines += ["", "Ratios: gan_test_ratio = gan_test_accuracy / real_test_accuracy, cas_ratio = cas_accuracy / "
              "real_test_accuracy, fid_ratio = domain_fid / domain_fid_real. Pass/fail is judged on the point "
              "estimates; brackets show 95 % intervals: stratified (by user) percentile bootstrap over the test "
              "images for accuracies and their ratios (paired for cas_ratio, no retraining), over the generated "
              "features and each real half for fid_ratio (recentred on the estimate), percentiles over random "
              "subsets for the KIDs; see `intervals` in the JSON for the resample counts.", "",
              "## Metrics", "", "| metric | value | meaning |", "|---|---|---|"]
    for key, text in _METRIC_TEXT:
        reason = report["reasons"].get(key)
        value = _fmt_ci(report.get(key), _report_ci(report, key))
        lines.append(f"| {key} | {value} | {text}" + (f" *Not measured: {reason}*" if reason else "") + " |")
    j = report["judge"]
    lines += ["", f"The judge (4 conv blocks 32-64-128-128 with BatchNorm, global average pooling, a 128-wide "
              f"feature layer) was {'reused from the cache' if j['from_cache'] else 'trained'} for {j['epochs_run']} "
              f"epochs ({j['train_seconds']} s, input {j['input_size']} px, seed {j['seed']}) with random circular "
              f"time shifts, small vertical translations and a mild blur, at the data's resolution. The CAS "
              f"classifier is trained for "
              f"{s['cas_epochs']} epochs (at least {j['min_steps']} steps). Tokenizer figures use "
              f"{s['tokenizer_scope']}.", "",
              "## Per user", "", "Accuracies with Wilson 95 % intervals (about 5 images per user make them wide).",
              "",
              "| user | real acc. | generated acc. | CAS acc. | diversity | memorization | # val | # generated |",
              "|---|---|---|---|---|---|---|---|"]
    for user_id, row in report["per_user"].items():
        ci = row.get("intervals", {})
        lines.append(f"| ID_{user_id} | {_fmt_ci(row['real_test_accuracy'], ci.get('real_test_accuracy'))} | "
                     f"{_fmt_ci(row['gan_test_accuracy'], ci.get('gan_test_accuracy'))} | "
                     f"{_fmt_ci(row['cas_accuracy'], ci.get('cas_accuracy'))} | {_fmt(row['diversity_ratio'])} | "
                     f"{_fmt(row['memorization_rate'])} | {row['num_validation']} | {row['num_generated']} |")
    captions = {
        "per_user_accuracy": "Per-user accuracy: the judge on real validation images, the judge on generated "
                             "images, and the CAS classifier on real validation images.",
        "confusion_matrix": "Confusion matrices of the judge (rows normalised): generated images by intended user, "
                            "and real validation images. A strong diagonal on the left means each user's identity "
                            "survives generation.",
        "samples": "Real validation images (left) next to generated images (right), one row per user.",
        "nearest_neighbours": "The generated images closest to a training image (top) and that training image "
                              "(bottom). Near-identical pairs mean copying.",
    }
    lines += ["", "## Figures", ""]
    for name, rel in report.get("figures", {}).items():
        lines += [f"{captions[name]}", "", f"![{name}]({rel})", ""]
    return "\n".join(lines)
