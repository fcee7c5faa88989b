"""Loaders on tiny copies fabricated in each official layout."""

import numpy as np
import pytest
import scipy.io
from helpers import write_image
from PIL import Image

from infodisent.data.datasets import DatasetLayoutError, ImageReadError, build_dataset, read_image


def make_cub(root, n_classes=3, per_class=4):
    cub = root / "CUB_200_2011"
    lines = {k: [] for k in ("images", "labels", "split", "boxes", "locs")}
    classes = [f"{c + 1} {c + 1:03d}.Bird_{c}" for c in range(n_classes)]
    iid = 0
    for c in range(n_classes):
        for k in range(per_class):
            iid += 1
            rel = f"{c + 1:03d}.Bird_{c}/img_{iid}.jpg"
            write_image(cub / "images" / rel, iid)
            lines["images"].append(f"{iid} {rel}")
            lines["labels"].append(f"{iid} {c + 1}")
            lines["split"].append(f"{iid} {int(k % 2 == 0)}")
            lines["boxes"].append(f"{iid} 1.0 2.0 10.0 12.0")
            lines["locs"] += [f"{iid} 1 5.0 6.0 1", f"{iid} 2 0.0 0.0 0"]
    (cub / "images.txt").write_text("\n".join(lines["images"]) + "\n")
    (cub / "image_class_labels.txt").write_text("\n".join(lines["labels"]) + "\n")
    (cub / "train_test_split.txt").write_text("\n".join(lines["split"]) + "\n")
    (cub / "classes.txt").write_text("\n".join(classes) + "\n")
    (cub / "bounding_boxes.txt").write_text("\n".join(lines["boxes"]) + "\n")
    (cub / "parts").mkdir()
    (cub / "parts" / "parts.txt").write_text("1 back\n2 beak\n")
    (cub / "parts" / "part_locs.txt").write_text("\n".join(lines["locs"]) + "\n")
    return cub


def test_cub_layout(tmp_path):
    make_cub(tmp_path)
    for root in (tmp_path, tmp_path / "CUB_200_2011"):
        train = build_dataset("cub", root, "train")
        test = build_dataset("cub", root, "test")
        assert len(train) == 6 and len(test) == 6
        assert train.classes == ["Bird_0", "Bird_1", "Bird_2"]
        assert sorted(set(train.labels.tolist())) == [0, 1, 2]
    assert train.image_ids == [1, 3, 5, 7, 9, 11]
    assert list(train.boxes.columns) == ["image_id", "x", "y", "width", "height"] and len(train.boxes) == 6
    assert train.part_names == ["back", "beak"]
    assert len(train.part_locs) == 12 and set(train.part_locs["index"]) == set(range(6))
    img, y, i = build_dataset("cub", tmp_path, "train", transform=np.asarray)[2]
    assert img.shape == (32, 40, 3) and y == 1 and i == 2


def test_cub_max_classes(tmp_path):
    make_cub(tmp_path)
    ds = build_dataset("cub", tmp_path, "test", max_classes=2)
    assert ds.classes == ["Bird_0", "Bird_1"] and len(ds) == 4 and len(ds.boxes) == 4


def test_cub_wrong_root_names_the_layout(tmp_path):
    with pytest.raises(DatasetLayoutError) as e:
        build_dataset("cub", tmp_path, "train")
    assert "images.txt" in str(e.value) and "train_test_split.txt" in str(e.value)


def test_stanford_dogs_layout(tmp_path):
    files = []
    for c, wnid in enumerate(["n02085620-Chihuahua", "n02085782-Japanese_spaniel"]):
        for k in range(3):
            rel = f"{wnid}/{wnid.split('-')[0]}_{k}.jpg"
            write_image(tmp_path / "Images" / rel, 10 * c + k)
            files.append((rel, c + 1))
    (tmp_path / "lists").mkdir()
    for split, sel in (("train", files[0::2]), ("test", files[1::2])):
        scipy.io.savemat(
            tmp_path / "lists" / f"{split}_list.mat",
            {"file_list": np.array([[np.array([f])] for f, _ in sel], dtype=object),
             "labels": np.array([[y] for _, y in sel])},
        )
    train = build_dataset("stanford_dogs", tmp_path, "train")
    assert train.classes == ["Chihuahua", "Japanese spaniel"]
    assert len(train) == 3 and train.labels.tolist() == [0, 0, 1]
    assert train.load_image(0).mode == "RGB"


def test_stanford_cars_devkit_and_folder_export(tmp_path):
    dev = tmp_path / "cars"
    (dev / "devkit").mkdir(parents=True)
    scipy.io.savemat(dev / "devkit" / "cars_meta.mat", {"class_names": np.array([["AM General Hummer", "Acura RL"]], dtype=object)})
    for split, folder in (("train", "cars_train"), ("test", "cars_test")):
        names = [f"{k:05d}.jpg" for k in range(4)]
        for k, n in enumerate(names):
            write_image(dev / folder / n, k)
        annos = np.array([(n, k % 2 + 1) for k, n in enumerate(names)], dtype=[("fname", object), ("class", object)])
        target = dev / "devkit" / "cars_train_annos.mat" if split == "train" else dev / "cars_test_annos_withlabels.mat"
        scipy.io.savemat(target, {"annotations": annos[None, :]})
    ds = build_dataset("stanford_cars", dev, "test")
    assert ds.classes == ["AM General Hummer", "Acura RL"] and ds.labels.tolist() == [0, 1, 0, 1]
    exp = tmp_path / "export"
    for split in ("train", "test"):
        for c in ("Acura RL", "BMW M3"):
            write_image(exp / split / c / "a.jpg", 1)
    ds = build_dataset("stanford_cars", exp, "train")
    assert ds.classes == ["Acura RL", "BMW M3"] and ds.name == "stanford_cars"
    with pytest.raises(DatasetLayoutError, match="cars_meta.mat"):
        build_dataset("stanford_cars", tmp_path / "nothing", "train")


def test_imagenet_layout_maps_wnids(tmp_path):
    for split in ("train", "val"):
        for wnid in ("n01440764", "n02102040"):
            write_image(tmp_path / split / wnid / f"{wnid}_1.JPEG", 3)
    ds = build_dataset("imagenet", tmp_path, "test")
    assert ds.imagenet_index == [0, 217]
    assert ds.classes[0].startswith("tench")
    with pytest.raises(DatasetLayoutError, match="val"):
        build_dataset("imagenet", tmp_path / "train", "train")


def test_folder_with_and_without_split_folders(tmp_path):
    for split in ("train", "val"):
        for c in ("b", "a"):
            write_image(tmp_path / "s" / split / c / "x.png", 0)
    assert build_dataset("folder", tmp_path / "s", "test").classes == ["a", "b"]
    for c in ("cat", "dog"):
        for k in range(10):
            write_image(tmp_path / "flat" / c / f"{k}.jpg", k)
    tr, te = build_dataset("folder", tmp_path / "flat", "train"), build_dataset("folder", tmp_path / "flat", "test")
    assert len(tr) == 16 and len(te) == 4 and not set(tr.paths) & set(te.paths)
    assert build_dataset("folder", tmp_path / "flat", "test").paths == te.paths  # deterministic
    with pytest.raises(DatasetLayoutError, match="ROOT/train"):
        build_dataset("folder", tmp_path / "missing", "train")


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "LA", "I;16"])
def test_image_modes_become_rgb(tmp_path, mode):
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    arr = np.arange(32 * 40, dtype=np.uint16).reshape(32, 40)
    if mode == "I;16":
        Image.fromarray(arr * 50).save(path)  # uint16 -> mode I;16
    else:
        write_image(path, 0, mode=mode)
    img = read_image(path)
    assert img.mode == "RGB" and img.size == (40, 32)
    if mode == "I;16":
        a = np.asarray(img)
        assert a.min() == 0 and a.max() == 255  # rescaled, not clipped


def test_transparent_pixels_become_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.save(tmp_path / "t.png")
    assert np.asarray(read_image(tmp_path / "t.png"))[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_corrupt_image_is_reported_by_path(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        write_image(path, 0, size=(200, 200))
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageReadError) as e:
        read_image(path)
    assert str(path) in str(e.value) and e.value.path == str(path)
    assert "0x" not in str(e.value).replace(str(path), "")  # no object repr such as <_io.BytesIO at 0x...>


@pytest.mark.parametrize("content,reason", [(b"not an image at all", "not a recognised image format"),
                                            (b"", "empty file (0 bytes)")])
def test_unreadable_file_reason_is_plain_words(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as e:
        read_image(path)
    assert e.value.reason == reason
    assert str(e.value) == f"cannot read image {path}: {reason}"


def test_unknown_dataset_and_missing_root():
    with pytest.raises(ValueError, match="choose one of"):
        build_dataset("mnist", "/tmp", "train")
    with pytest.raises(ValueError, match="--root"):
        build_dataset("cub", None, "train")
