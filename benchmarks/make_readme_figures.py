"""Figures for the README: one simulated spectrogram per default user; real next to generated images per user.

Run from the repository root::

    .venv/bin/python -m benchmarks.make_readme_figures [--output docs/simulated_users.png]
    # after train_main.py and generate_main.py (README quick start):
    .venv/bin/python -m benchmarks.make_readme_figures --generated [--model_dir ... --generated_dir ...]
"""

from __future__ import annotations

import argparse
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from vqvae_transformer.data.provenance import load_model_data  # noqa: E402
from vqvae_transformer.data.simulate import recording_rng  # noqa: E402
from vqvae_transformer.data.simulator import draw_persons, simulate_spectrogram  # noqa: E402
from vqvae_transformer.validation.inputs import load_generated  # noqa: E402
from vqvae_transformer.validation.report_figures import real_vs_generated_figure  # noqa: E402


def simulated_users_figure(output: pathlib.Path, num_users: int = 31, seed: int = 0, columns: int = 8) -> pathlib.Path:
    """Save a labelled grid with the first recording of each simulated user (the dataset's sample_0000).

    Args:
        output: PNG path to write.
        num_users: users to show (ids 1..num_users).
        seed: dataset seed (same persons and recordings as ``simulate_dataset(seed=seed)``).
        columns: grid columns.

    Returns:
        The written path.
    """
    persons = draw_persons(num_users, seed)
    rows = -(-num_users // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.55 * rows), squeeze=False, dpi=75)
    for ax in axes.flat:
        ax.axis("off")
    for ax, person in zip(axes.flat, persons):
        spec = simulate_spectrogram(person, recording_rng(seed, person.user_id))
        extent = (spec.time_s[0], spec.time_s[-1], spec.doppler_hz[-1], spec.doppler_hz[0])
        ax.imshow(spec.db, aspect="auto", cmap="jet", extent=extent, vmin=-spec.dynamic_range_db, vmax=0.0,
                  interpolation="bilinear")
        ax.set_title(f"ID_{person.user_id}  {person.height:.2f} m  {spec.speed:.2f} m/s", fontsize=6.5, pad=2)
    axes.flat[0].axis("on")
    axes.flat[0].tick_params(labelsize=5, length=2, pad=1)
    axes.flat[0].set_ylabel("Doppler (Hz)", fontsize=6)
    axes.flat[0].set_xlabel("time (s)", fontsize=6, labelpad=1)
    fig.suptitle("Simulated 24 GHz micro-Doppler, one recording per default user (dB, top 45 dB)", fontsize=9)
    fig.tight_layout(pad=0.4, h_pad=0.5, w_pad=0.3, rect=(0, 0, 1, 0.97))
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3]  # [H, W, 3] uint8
    plt.close(fig)
    # A 96-colour palette keeps the PNG small (noise in jet compresses badly as true colour).
    Image.fromarray(rgb).quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(output, optimize=True)
    return output


def generated_users_figure(model_dir: pathlib.Path, generated_dir: pathlib.Path, output: pathlib.Path,
                           num_users: int = 8) -> pathlib.Path:
    """Save validate_main's real-vs-generated rows (real validation images left, generated right) for the first
    users, in grayscale.

    Args:
        model_dir: the trained model (its data and saved validation split give the real images).
        generated_dir: ``generate_main.py`` output (``ID_<k>/`` folders).
        output: PNG path to write.
        num_users: rows (the first users of the model).

    Returns:
        The written path.
    """
    data, _, val_idx = load_model_data(model_dir)
    generated = load_generated(generated_dir, data, data.user_ids)
    path = real_vs_generated_figure(output, data.images[val_idx], data.labels[val_idx], generated.images,
                                    generated.labels, data.user_ids, max_rows=num_users)
    Image.open(path).convert("L").save(path, optimize=True)  # grayscale: a third of the RGB file
    return path


def main() -> None:
    """Write the README figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="docs/simulated_users.png", help="PNG path (default docs/simulated_users.png)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--generated", action="store_true",
                        help="write docs/generated_users.png (real vs generated per user) instead")
    parser.add_argument("--model_dir", default="outputs/vqvae_transformer", help="trained model, for --generated")
    parser.add_argument("--generated_dir", default="generated_images", help="generate_main output, for --generated")
    args = parser.parse_args()
    if args.generated:
        default = args.output == parser.get_default("output")
        output = pathlib.Path("docs/generated_users.png" if default else args.output)
        path = generated_users_figure(pathlib.Path(args.model_dir), pathlib.Path(args.generated_dir), output)
    else:
        path = simulated_users_figure(pathlib.Path(args.output), seed=args.seed)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
