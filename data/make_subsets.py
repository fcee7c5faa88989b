"""Build the small real-data subsets that the tutorials and some tests use, from the full public releases.

Two subcommands (see data/README.md for where the releases come from)::

    python data/make_subsets.py cub --root CUB_200_2011 --classes 50 --out ../shared/datasets/cub50
    python data/make_subsets.py imagenette --root imagenette2 --train-per-class 100 --val-per-class 50 \\
        --size 224 --seed 0 --out ../shared/datasets/imagenette_mini

``cub`` writes ``OUT/CUB_200_2011`` in the official layout for species 1..N, with their original image ids
and the official split. Images whose shorter side is above ``--size`` (256) are downscaled so that it is
``--size`` and re-encoded as JPEG (``--quality``, 88); smaller ones are copied byte for byte (never
upscaled). ``bounding_boxes.txt`` and ``parts/part_locs.txt`` are rescaled with each image (x by
new width / old width, y by new height / old height, written to 2 decimals), so every box and part
location is in the pixel coordinates of the file on disk.

``imagenette`` writes ``OUT/train/<wnid>/*.JPEG`` and ``OUT/val/<wnid>/*.JPEG``: per class, a fixed random
sample (``random.Random(seed).sample`` of the sorted file list; one generator walks train then val, wnids
in sorted order) resized so that the shorter side is ``--size`` and then center-cropped to
``--size`` x ``--size``. Greyscale images stay greyscale (the project's loaders convert to RGB).

Both build into ``OUT.tmp-*`` beside ``OUT`` and rename it into place when done, so an interrupted run
leaves no half-written ``OUT``; an existing ``OUT`` is refused unless ``--overwrite``. An unreadable image
is skipped with a warning (and, for CUB, its id left out of every table) and all of them are listed at the
end; ``--strict`` stops at the first instead. Needs only Python's standard library and Pillow.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image, UnidentifiedImageError

CUB_TABLES = ("images.txt", "classes.txt", "image_class_labels.txt", "train_test_split.txt")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


class SubsetError(Exception):
    """A problem the user can fix (a wrong --root, an existing --out, too few images), reported without a traceback."""


class BadImageError(SubsetError):
    """An image file that is missing or cannot be decoded."""

    def __init__(self, path: Path, reason: str):
        """``path``: the image file; ``reason``: why it cannot be read."""
        self.path = path
        super().__init__(f"cannot read image {path}: {reason}")


# ----------------------------------------------------------------------------------------------- helpers


def open_image(path: Path) -> Image.Image:
    """Decode ``path`` fully (so truncated files fail here); :class:`BadImageError` names the path."""
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError as e:
        raise BadImageError(path, "file not found") from e
    except UnidentifiedImageError as e:
        raise BadImageError(path, "not a recognised image format") from e
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad files
        raise BadImageError(path, f"{type(e).__name__}: {e}") from e
    return img


def save_jpeg(img: Image.Image, path: Path, quality: int) -> None:
    """Write ``img`` to ``path`` as JPEG at ``quality``; RGB, greyscale (L) and CMYK stay as they are, other
    modes become RGB."""
    if img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=quality)


def shorter_side_size(width: int, height: int, side: int) -> tuple[int, int]:
    """The size of a ``width`` x ``height`` image scaled so that its shorter side is ``side`` (longer side rounded)."""
    if width <= height:
        return side, max(1, round(height * side / width))
    return max(1, round(width * side / height)), side


def read_lines(path: Path) -> list[str]:
    """The non-blank lines of a CUB table ``path``."""
    return [line for line in path.read_text().splitlines() if line.strip()]


def read_table(path: Path) -> list[list[str]]:
    """The whitespace-separated rows of a CUB table ``path``."""
    return [line.split() for line in read_lines(path)]


def fmt(v: float) -> str:
    """A coordinate ``v`` as written to the rescaled tables (2 decimals)."""
    return f"{v:.2f}"


@contextmanager
def atomic_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a fresh ``out.tmp-*`` folder beside ``out``, renamed to ``out`` when the block succeeds and removed
    when it fails. ``out``: the final folder; ``overwrite``: replace an existing ``out`` instead of refusing."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise SubsetError(f"{out} already exists; pass --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


class Problems:
    """Unreadable images met while building: warned about and collected, or raised at once when ``strict``."""

    def __init__(self, strict: bool):
        """``strict``: raise the first :class:`BadImageError` instead of skipping the image."""
        self.strict = strict
        self.skipped: list[BadImageError] = []

    def skip(self, err: BadImageError) -> None:
        """Record ``err`` (a bad image) and warn, or raise it when strict."""
        if self.strict:
            raise err
        print(f"warning: skipping {err}", file=sys.stderr)
        self.skipped.append(err)

    def report(self) -> None:
        """List every skipped image on stderr."""
        if self.skipped:
            print(f"skipped {len(self.skipped)} unreadable image(s):", file=sys.stderr)
            for err in self.skipped:
                print(f"  {err.path}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- CUB


def find_cub_root(root: Path) -> Path:
    """The CUB_200_2011 folder: ``root`` itself or ``root/CUB_200_2011``; a :class:`SubsetError` naming the
    expected layout otherwise."""
    root = Path(root).expanduser()
    for cand in (root, root / "CUB_200_2011"):
        if all((cand / f).is_file() for f in CUB_TABLES) and (cand / "images").is_dir():
            return cand
    base = root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root
    missing = [f for f in (*CUB_TABLES, "images/") if not (base / f).exists()]
    raise SubsetError(
        f"{root} is not a CUB-200-2011 folder: expected {', '.join(CUB_TABLES)} and images/<NNN.Class>/*.jpg "
        f"under ROOT (the CUB_200_2011 folder unpacked from CUB_200_2011.tgz, or its parent); "
        f"missing from {base}: {', '.join(missing)}"
    )


def make_cub(
    root: Path,
    out: Path,
    classes: int = 50,
    size: int = 256,
    quality: int = 88,
    overwrite: bool = False,
    strict: bool = False,
) -> list[BadImageError]:
    """Write ``out/CUB_200_2011`` for the first ``classes`` species of the CUB-200-2011 folder ``root``.

    ``size``: the shorter side of downscaled images (smaller images are copied unchanged); ``quality``: the JPEG
    quality of re-encoded images; ``overwrite``: replace an existing ``out``; ``strict``: stop at the first
    unreadable image instead of skipping it. Returns the skipped images' errors.
    """
    src = find_cub_root(root)
    class_lines = read_lines(src / "classes.txt")[:classes]
    if len(class_lines) < classes:
        raise SubsetError(f"{src / 'classes.txt'} lists {len(class_lines)} classes, fewer than --classes {classes}")
    chosen = {line.split()[0] for line in class_lines}
    label_of = {iid: cid for iid, cid in read_table(src / "image_class_labels.txt")}
    images = [line.split(maxsplit=1) for line in read_lines(src / "images.txt")]
    images = [(iid, rel) for iid, rel in images if label_of.get(iid) in chosen]
    problems = Problems(strict)
    scale: dict[str, tuple[float, float]] = {}  # image id -> (x scale, y scale)

    with atomic_output(out, overwrite) as tmp:
        dst = tmp / "CUB_200_2011"
        for n, (iid, rel) in enumerate(images, 1):
            if n % 500 == 0:
                print(f"  {n}/{len(images)} images", file=sys.stderr)
            try:
                scale[iid] = _write_cub_image(src / "images" / rel, dst / "images" / rel, size, quality)
            except BadImageError as err:
                problems.skip(err)

        def keep(path: Path, transform: Callable[[list[str]], list[str]] | None = None) -> None:
            """Copy the table ``path`` (relative to the dataset), only the lines of written ids: as they are, or
            each line's fields through ``transform``."""
            out_lines = [
                line if transform is None else " ".join(transform(line.split()))
                for line in read_lines(src / path) if line.split()[0] in scale
            ]
            (dst / path).parent.mkdir(parents=True, exist_ok=True)
            (dst / path).write_text("".join(line + "\n" for line in out_lines))

        def box(r: list[str]) -> list[str]:
            """A bounding_boxes.txt row ``r`` (id x y width height) in the written image's pixels."""
            sx, sy = scale[r[0]]
            x, y, w, h = map(float, r[1:5])
            return [r[0], fmt(x * sx), fmt(y * sy), fmt(w * sx), fmt(h * sy)]

        def part(r: list[str]) -> list[str]:
            """A part_locs.txt row ``r`` (id part x y visible) in the written image's pixels."""
            sx, sy = scale[r[0]]
            return [r[0], r[1], fmt(float(r[2]) * sx), fmt(float(r[3]) * sy), *r[4:]]

        (dst / "images").mkdir(parents=True, exist_ok=True)
        (dst / "classes.txt").write_text("".join(line + "\n" for line in class_lines))
        for table in ("images.txt", "image_class_labels.txt", "train_test_split.txt"):
            keep(Path(table))
        if (src / "bounding_boxes.txt").is_file():
            keep(Path("bounding_boxes.txt"), box)
        if (src / "parts" / "part_locs.txt").is_file():
            keep(Path("parts/part_locs.txt"), part)
        for extra in ("parts/parts.txt", "README"):
            if (src / extra).is_file():
                (dst / extra).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / extra, dst / extra)

    problems.report()
    print(f"wrote {len(scale)} images of {len(class_lines)} classes to {Path(out) / 'CUB_200_2011'}")
    return problems.skipped


def _write_cub_image(src: Path, dst: Path, size: int, quality: int) -> tuple[float, float]:
    """Write the image ``src`` to ``dst``, downscaled to shorter side ``size`` at JPEG ``quality`` if it is larger,
    else copied unchanged; returns the (x, y) scale factors of its coordinates."""
    img = open_image(src)
    w, h = img.size
    dst.parent.mkdir(parents=True, exist_ok=True)
    if min(w, h) <= size:
        shutil.copyfile(src, dst)
        return 1.0, 1.0
    nw, nh = shorter_side_size(w, h, size)
    save_jpeg(img.resize((nw, nh), Image.Resampling.LANCZOS), dst, quality)
    return nw / w, nh / h


# ----------------------------------------------------------------------------------------------- Imagenette


def imagenette_files(root: Path) -> dict[str, dict[str, list[Path]]]:
    """``{split: {wnid: sorted image files}}`` for ``train`` and ``val`` of the Imagenette folder ``root``;
    a :class:`SubsetError` naming the expected layout otherwise."""
    root = Path(root).expanduser()
    files: dict[str, dict[str, list[Path]]] = {}
    for split in ("train", "val"):
        folder = root / split
        wnids = sorted(d.name for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
        if not wnids:
            raise SubsetError(
                f"{root} is not an Imagenette folder: expected train/<wnid>/*.JPEG and val/<wnid>/*.JPEG under ROOT "
                f"(the imagenette2 folder unpacked from imagenette2.tgz); {split}/ has no class folders"
            )
        files[split] = {
            w: sorted(f for f in (folder / w).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            for w in wnids
        }
    return files


def center_square(img: Image.Image, size: int) -> Image.Image:
    """``img`` resized so that its shorter side is ``size``, then center-cropped to ``size`` x ``size``."""
    nw, nh = shorter_side_size(*img.size, size)
    img = img.resize((nw, nh), Image.Resampling.LANCZOS)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def make_imagenette(
    root: Path,
    out: Path,
    train_per_class: int = 100,
    val_per_class: int = 50,
    size: int = 224,
    seed: int = 0,
    quality: int = 88,
    overwrite: bool = False,
    strict: bool = False,
) -> list[BadImageError]:
    """Write a fixed random subset of the Imagenette folder ``root`` to ``out/{train,val}/<wnid>/``.

    ``train_per_class``, ``val_per_class``: images sampled per class and split; ``size``: the square side of the
    written images; ``seed``: the sampling seed; ``quality``: JPEG quality; ``overwrite``: replace an existing
    ``out``; ``strict``: stop at the first unreadable image instead of skipping it. Returns the skipped images' errors.
    """
    files = imagenette_files(root)
    rng = random.Random(seed)
    problems = Problems(strict)
    written = 0
    with atomic_output(out, overwrite) as tmp:
        for split, k in (("train", train_per_class), ("val", val_per_class)):
            for wnid, paths in files[split].items():
                if len(paths) < k:
                    raise SubsetError(f"{root / split / wnid} has {len(paths)} images, fewer than the {k} asked for")
                for path in sorted(rng.sample(paths, k)):
                    try:
                        img = open_image(path)
                    except BadImageError as err:
                        problems.skip(err)
                        continue
                    save_jpeg(center_square(img, size), tmp / split / wnid / path.name, quality)
                    written += 1
    problems.report()
    print(f"wrote {written} images to {out}")
    return problems.skipped


# ----------------------------------------------------------------------------------------------- command line


def positive(text: str) -> int:
    """``text`` as an integer >= 1 (an argparse type)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line ``argv`` (``sys.argv[1:]`` when None), parsed."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--out", type=Path, required=True, help="the folder to create")
        q.add_argument("--quality", type=positive, default=88, help="JPEG quality of re-encoded images (default 88)")
        q.add_argument("--overwrite", action="store_true", help="replace an existing --out")
        q.add_argument("--strict", action="store_true", help="stop at the first unreadable image (default: skip it)")

    c = sub.add_parser("cub", help="CUB-200-2011, first N species, shorter side at most --size")
    c.add_argument("--root", type=Path, required=True, help="the CUB_200_2011 folder (or its parent)")
    c.add_argument("--classes", type=positive, default=50, help="keep species 1..N (default 50)")
    c.add_argument("--size", type=positive, default=256, help="shorter side of downscaled images (default 256)")
    common(c)

    n = sub.add_parser("imagenette", help="Imagenette, a seeded random subset, size x size")
    n.add_argument("--root", type=Path, required=True, help="the imagenette2 folder (holding train/ and val/)")
    n.add_argument("--train-per-class", type=positive, default=100)
    n.add_argument("--val-per-class", type=positive, default=50)
    n.add_argument("--size", type=positive, default=224, help="side of the square images (shorter side, center crop)")
    n.add_argument("--seed", type=int, default=0)
    common(n)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv``; 0 on success, 1 (with the reason on stderr) on a :class:`SubsetError`."""
    a = parse_args(argv)
    try:
        if a.command == "cub":
            make_cub(a.root, a.out, a.classes, a.size, a.quality, a.overwrite, a.strict)
        else:
            make_imagenette(a.root, a.out, a.train_per_class, a.val_per_class, a.size, a.seed, a.quality,
                            a.overwrite, a.strict)
    except SubsetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
