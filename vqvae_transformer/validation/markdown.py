"""``validation_report.md``: the report dict rendered for people (verdict, thresholds, metrics with their meaning,
per-user table, figures)."""

from __future__ import annotations

from typing import Any, Sequence


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
    ("diversity_ratio", "Mean pairwise feature distance among a user's generated images, averaged over users, "
                        "over the same among the users' real validation images (1 = as diverse as real, "
                        "0 = the same image repeated); the per-user table gives each user's own ratio."),
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


def _selection_lines(selection: dict | None) -> list[str]:
    """A caveat paragraph when the generated images were selected by a judge (``--keep_attributed``)."""
    if not selection:
        return []
    rate = selection.get("acceptance_rate")
    return [f"**Selected samples:** these images were kept by `generate_main.py --keep_attributed` (a "
            f"{selection.get('method')}, {selection.get('oversample')} candidates per kept image, acceptance rate "
            f"{_fmt(rate)}). The judge that scores gan-test has the same architecture and training images, so "
            "gan-test is not an independent measure here; CAS (a classifier trained on these images, tested on real "
            "ones) is.", ""]


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
        *_selection_lines(report.get("generated_selection")),
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
              "features and each real half for fid_ratio (recentred on the estimate), over each user's generated "
              "and real images for diversity_ratio (pairs of distinct images), percentiles over random "
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
