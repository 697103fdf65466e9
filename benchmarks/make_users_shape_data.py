"""Write a small dataset of the users' shape: 31 persons x 24 images, 256 px, jet-coloured, mixed JPG and palette PNG.

Our users have a few dozen spectrograms per person, usually saved as colour images. Every quality figure is measured
on the embedded default *and* on such a set. The persons come from the embedded simulator with another seed than the
default data (seed 0), so they are different people; even-numbered images are written as JPG (quality 90), odd ones as
palette ("P" mode, 256 colours) PNG.

Run from the repository root::

    python -m benchmarks.make_users_shape_data --output_dir small_data            # seed 7
    python train_main.py --data_dir small_data --output_dir outputs/small
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import PIL.Image

from vqvae_transformer.atomic import write_text_atomic
from vqvae_transformer.data.simulate import main as simulate_main


def build_parser() -> argparse.ArgumentParser:
    """Flags of the dataset writer."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True, help="new folder for ID_<k>/ images (must not exist)")
    parser.add_argument("--num_users", type=int, default=31, help="persons (default: 31)")
    parser.add_argument("--samples_per_user", type=int, default=24, help="images per person (default: 24)")
    parser.add_argument("--resolution", type=int, default=256, help="image side in pixels (default: 256)")
    parser.add_argument("--seed", type=int, default=7, help="simulator seed; the default data uses 0 (default: 7)")
    return parser


def convert_mixed(source: Path, target: Path) -> int:
    """Copy ``source/ID_<k>/*.png`` to ``target/ID_<k>/``: even images as JPG, odd ones as palette PNG."""
    written = 0
    for user in sorted(p for p in source.iterdir() if p.is_dir()):
        (target / user.name).mkdir(parents=True)
        for index, path in enumerate(sorted(user.glob("*.png"))):
            image = PIL.Image.open(path).convert("RGB")
            if index % 2 == 0:
                image.save(target / user.name / f"{path.stem}.jpg", quality=90)
            else:
                image.quantize(colors=256).save(target / user.name / f"{path.stem}.png")
            written += 1
    return written


def main(argv=None) -> int:
    """Simulate into a temporary folder, convert into ``--output_dir``; returns the exit code."""
    args = build_parser().parse_args(argv)
    target = Path(args.output_dir)
    if target.exists():
        print(f"--output_dir {target} already exists; give a new folder", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        simulated = Path(tmp) / "sim"
        code = simulate_main(["--num_users", str(args.num_users), "--samples_per_user", str(args.samples_per_user),
                              "--resolution", str(args.resolution), "--seed", str(args.seed), "--colormap", "jet",
                              "--output_dir", str(simulated), "--no_progress"])
        if code:
            return code
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent.resolve()))
        count = convert_mixed(simulated, staging)
        write_text_atomic(staging / "README.txt",
                          f"simulator seed {args.seed}, {args.num_users} persons x {args.samples_per_user}, "
                          f"{args.resolution} px, jet colormap; even images JPG (q 90), odd palette PNG\n")
        staging.rename(target)
    print(f"wrote {count} images to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
