"""data/make_subsets.py on tiny fabricated copies of the official CUB-200-2011 and Imagenette layouts: the subsets
load with the project's own loaders, images and annotations are rescaled together, sampling is seeded."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import write_image
from PIL import Image

from infodisent.data.datasets import build_dataset

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "data" / "make_subsets.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("make_subsets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ms = _load_script()

# (width, height) of each class's two images: landscape, portrait, smaller than 256 (kept), exactly 256 (kept)
CUB_SIZES = {1: [(512, 384), (300, 600)], 2: [(200, 150), (384, 512)], 3: [(600, 300), (256, 300)]}


def cub_id(c: int, k: int) -> int:
    """Non-contiguous ids, so that keeping the original ids is visible."""
    return 10 * c + k + 1


def make_cub(root: Path) -> Path:
    """A tiny CUB_200_2011 in the official layout: 3 classes, 2 images each (k=0 train, k=1 test), boxes and
    two parts per image (one visible, one not)."""
    cub = root / "CUB_200_2011"
    rows = {k: [] for k in ("images", "labels", "split", "boxes", "locs")}
    for c, sizes in CUB_SIZES.items():
        for k, (w, h) in enumerate(sizes):
            iid, rel = cub_id(c, k), f"{c:03d}.Bird_{c}/Bird_{c}_{k}.jpg"
            write_image(cub / "images" / rel, iid, size=(w, h))
            rows["images"].append(f"{iid} {rel}")
            rows["labels"].append(f"{iid} {c}")
            rows["split"].append(f"{iid} {int(k == 0)}")
            rows["boxes"].append(f"{iid} {0.1 * w + 0.3:.1f} {0.2 * h + 0.7:.1f} {0.5 * w:.1f} {0.6 * h:.1f}")
            rows["locs"] += [f"{iid} 1 {0.37 * w:.1f} {0.61 * h:.1f} 1", f"{iid} 2 0.0 0.0 0"]
    for name, key in (("images.txt", "images"), ("image_class_labels.txt", "labels"),
                      ("train_test_split.txt", "split"), ("bounding_boxes.txt", "boxes")):
        (cub / name).write_text("\n".join(rows[key]) + "\n")
    (cub / "classes.txt").write_text("".join(f"{c} {c:03d}.Bird_{c}\n" for c in CUB_SIZES))
    (cub / "parts").mkdir()
    (cub / "parts" / "parts.txt").write_text("1 back\n2 left eye\n")
    (cub / "parts" / "part_locs.txt").write_text("\n".join(rows["locs"]) + "\n")
    (cub / "README").write_text("The Caltech-UCSD Birds-200-2011 Dataset (fabricated copy)\n")
    return cub


def _table(path: Path) -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    for line in path.read_text().splitlines():
        iid, *rest = line.split()
        out.setdefault(int(iid), []).extend(float(v) for v in rest)
    return out


def check_cub_subset(src: Path, out: Path, classes: int, skipped: tuple[int, ...] = ()) -> None:
    """``out`` is the subset of ``src`` for the first ``classes`` classes, less the ``skipped`` ids: it loads with
    the project's loader, images are downscaled to shorter side 256 (never upscaled), boxes and part locations
    scale with them."""
    kept = [cub_id(c, k) for c in range(1, classes + 1) for k in range(2) if cub_id(c, k) not in skipped]
    train, test = build_dataset("cub", out, "train"), build_dataset("cub", out, "test")
    assert train.num_classes == test.num_classes == classes
    assert train.classes == [f"Bird_{c}" for c in range(1, classes + 1)]
    assert sorted(train.image_ids + test.image_ids) == kept
    assert train.image_ids == [i for i in kept if i % 10 == 1]

    dst = out / "CUB_200_2011"
    src_boxes, dst_boxes = _table(src / "bounding_boxes.txt"), _table(dst / "bounding_boxes.txt")
    src_locs, dst_locs = _table(src / "parts" / "part_locs.txt"), _table(dst / "parts" / "part_locs.txt")
    assert sorted(dst_boxes) == sorted(dst_locs) == kept
    for ds in (train, test):
        for i, iid in enumerate(ds.image_ids):
            w, h = CUB_SIZES[iid // 10][iid % 10 - 1]
            img = ds.load_image(i)
            nw, nh = img.size
            if min(w, h) <= 256:  # never upscaled: the very same file
                assert (nw, nh) == (w, h)
                rel = Path(ds.paths[i]).relative_to(dst / "images")
                assert (dst / "images" / rel).read_bytes() == (src / "images" / rel).read_bytes()
            else:
                assert min(nw, nh) == 256 and abs(max(nw, nh) - max(w, h) * 256 / min(w, h)) <= 0.5
            sx, sy = nw / w, nh / h
            x, y, bw, bh = src_boxes[iid]
            np.testing.assert_allclose(dst_boxes[iid], [x * sx, y * sy, bw * sx, bh * sy], rtol=0, atol=0.005 + 1e-9)
            box = ds.boxes.set_index("image_id").loc[iid]
            np.testing.assert_allclose([box.x, box.y, box.width, box.height], dst_boxes[iid], rtol=0, atol=1e-9)
            (_, px, py, vis1, _, qx, qy, vis2) = src_locs[iid]
            np.testing.assert_allclose(dst_locs[iid], [1, px * sx, py * sy, vis1, 2, qx * sx, qy * sy, vis2],
                                       rtol=0, atol=0.005 + 1e-9)
            locs = ds.part_locs[ds.part_locs["image_id"] == iid]
            assert list(locs["part_id"]) == [1, 2] and list(locs["visible"]) == [1, 0]
            np.testing.assert_allclose(locs[["x", "y"]].to_numpy().ravel(), [px * sx, py * sy, 0, 0], atol=0.005 + 1e-9)
    assert train.part_names == ["back", "left eye"]


def test_cub_subset_loads_and_rescales_boxes_and_parts(tmp_path):
    src = make_cub(tmp_path / "full")
    skipped = ms.make_cub(tmp_path / "full", tmp_path / "cub2", classes=2)  # the parent of CUB_200_2011 works too
    assert skipped == []
    check_cub_subset(src, tmp_path / "cub2", classes=2)
    dst = tmp_path / "cub2" / "CUB_200_2011"
    assert (dst / "classes.txt").read_text() == "1 001.Bird_1\n2 002.Bird_2\n"
    assert not (dst / "images" / "003.Bird_3").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cub2", "full"]  # no temporary folder left behind


def test_cub_command_line(tmp_path):
    src = make_cub(tmp_path / "full")
    out = tmp_path / "shared" / "cub3"
    cmd = [sys.executable, "data/make_subsets.py", "cub", "--root", str(src), "--classes", "3", "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote 6 images of 3 classes" in done.stdout
    check_cub_subset(src, out, classes=3)
    dst = out / "CUB_200_2011"
    for same in ("classes.txt", "images.txt", "image_class_labels.txt", "train_test_split.txt",
                 "parts/parts.txt", "README"):
        assert (dst / same).read_text() == (src / same).read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["cub3"]  # no temporary folder left behind


def test_cub_quality_applies_to_reencoded_images_only(tmp_path):
    make_cub(tmp_path / "full")
    sizes = {}
    for q in (30, 95):
        ms.make_cub(tmp_path / "full", tmp_path / f"q{q}", classes=1, quality=q)
        sizes[q] = (tmp_path / f"q{q}" / "CUB_200_2011" / "images" / "001.Bird_1" / "Bird_1_0.jpg").stat().st_size
    assert sizes[30] < sizes[95]


def test_corrupt_cub_image_is_skipped_and_named_or_fails_with_strict(tmp_path, capsys):
    src = make_cub(tmp_path / "full")
    bad = src / "images" / "002.Bird_2" / "Bird_2_1.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    skipped = ms.make_cub(src, tmp_path / "out", classes=3)
    assert [e.path for e in skipped] == [bad]
    err = capsys.readouterr().err
    assert f"warning: skipping cannot read image {bad}" in err and f"skipped 1 unreadable image(s):\n  {bad}" in err
    check_cub_subset(src, tmp_path / "out", classes=3, skipped=(cub_id(2, 1),))

    with pytest.raises(ms.BadImageError, match=str(bad)):
        ms.make_cub(src, tmp_path / "strict", classes=3, strict=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "out"]  # nothing half-written


def test_wrong_root_names_the_expected_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ms.SubsetError, match=r"expected images\.txt, classes\.txt, image_class_labels\.txt, "
                                             r"train_test_split\.txt and images/.* under ROOT") as e:
        ms.make_cub(tmp_path / "empty", tmp_path / "out")
    assert "CUB_200_2011.tgz" in str(e.value)
    src = make_cub(tmp_path / "full")
    (src / "images.txt").unlink()
    with pytest.raises(ms.SubsetError, match=f"missing from {src}: images.txt$"):
        ms.make_cub(tmp_path / "full", tmp_path / "out")
    with pytest.raises(ms.SubsetError, match=r"expected train/<wnid>/\*\.JPEG and val/<wnid>/\*\.JPEG under ROOT"):
        ms.make_imagenette(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()

    cmd = [sys.executable, "data/make_subsets.py", "imagenette", "--root", str(tmp_path / "empty"),
           "--out", str(tmp_path / "o")]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert "imagenette2.tgz" in done.stderr


def test_existing_out_is_refused_without_overwrite(tmp_path):
    make_cub(tmp_path / "full")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(ms.SubsetError, match="already exists; pass --overwrite"):
        ms.make_cub(tmp_path / "full", out, classes=1)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    cmd = [sys.executable, "data/make_subsets.py", "cub", "--root", str(tmp_path / "full"), "--classes", "1",
           "--out", str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "already exists" in done.stderr
    ms.make_cub(tmp_path / "full", out, classes=1, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["CUB_200_2011"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "out"]


# ----------------------------------------------------------------------------------------------- Imagenette

WNIDS = ("n01440764", "n02102040")  # tench, English springer: class order is the sorted wnids


def make_imagenette(root: Path) -> Path:
    """A tiny imagenette2: 6 train and 4 val images per class, of assorted sizes; the springer's train images
    are greyscale."""
    for split, n in (("train", 6), ("val", 4)):
        for c, wnid in enumerate(WNIDS):
            for k in range(n):
                mode = "L" if (split, wnid) == ("train", WNIDS[1]) else "RGB"
                write_image(root / split / wnid / f"{wnid}_{split}{k}.JPEG", 100 * c + k,
                            size=(50 + 13 * k, 90 - 7 * k), mode=mode)
    (root / "noisy_imagenette.csv").write_text("path,noisy_labels_0\n")
    return root


def _listing(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.JPEG"))


def test_imagenette_subset_loads_square_and_seeded(tmp_path):
    root = make_imagenette(tmp_path / "imagenette2")
    ms.make_imagenette(root, tmp_path / "a", train_per_class=3, val_per_class=2, size=32, seed=0)
    train, test = build_dataset("imagenet", tmp_path / "a", "train"), build_dataset("imagenet", tmp_path / "a", "test")
    assert (len(train), len(test), train.num_classes) == (6, 4, 2)
    assert train.wnids == list(WNIDS) and train.classes[0] == "tench, Tinca tinca"
    assert np.bincount(train.labels).tolist() == [3, 3] and np.bincount(test.labels).tolist() == [2, 2]
    for ds in (train, test):
        for i, path in enumerate(ds.paths):
            with Image.open(path) as img:
                assert img.size == (32, 32)
                assert img.mode == ("L" if f"train/{WNIDS[1]}" in path else "RGB")  # greyscale kept as it is
            assert ds.load_image(i).mode == "RGB"

    ms.make_imagenette(root, tmp_path / "b", train_per_class=3, val_per_class=2, size=32, seed=0)
    ms.make_imagenette(root, tmp_path / "c", train_per_class=3, val_per_class=2, size=32, seed=1)
    assert _listing(tmp_path / "a") == _listing(tmp_path / "b")
    for rel in _listing(tmp_path / "a"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    assert _listing(tmp_path / "a") != _listing(tmp_path / "c")

    with pytest.raises(ms.SubsetError, match="has 4 images, fewer than the 5 asked for"):
        ms.make_imagenette(root, tmp_path / "d", train_per_class=3, val_per_class=5)
    assert not (tmp_path / "d").exists()


def test_center_square_resizes_shorter_side_then_crops_the_middle():
    stripes = np.zeros((32, 96, 3), np.uint8)
    stripes[:, :32, 0] = stripes[:, 32:64, 1] = stripes[:, 64:, 2] = 255  # red | green | blue
    square = ms.center_square(Image.fromarray(stripes), 32)
    assert square.size == (32, 32)
    assert (np.asarray(square) == [0, 255, 0]).all()
    tall = ms.center_square(Image.fromarray(stripes.transpose(1, 0, 2)).resize((64, 192)), 16)
    assert tall.size == (16, 16) and (np.asarray(tall)[2:-2].argmax(-1) == 1).all()
