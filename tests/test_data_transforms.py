"""Transforms and decoding: the array pipeline computes the torchvision + PIL pipeline of the original bit for bit,
with the same random draws, and the decoder gives PIL's pixels."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from timm.data.random_erasing import RandomErasing

from data.datasets import DatasetError
from data.loader import jpeg_orientation, read_image
from data.transforms import EvalTransform, TrainTransform, random_crop_origin


def reference_train(size, flip_prob, padding, erase_prob, mean, std) -> T.Compose:
    """The original's training pipeline on PIL images."""
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=flip_prob),
        T.Pad(padding),
        T.RandomCrop(size),
        T.ToTensor(),
        T.Normalize(mean=mean, std=std),
        RandomErasing(probability=erase_prob, min_area=0.02, max_area=1 / 3, min_aspect=0.3, mode="pixel",
                      max_count=1, device="cpu"),
    ])


def reference_eval(size, mean, std) -> T.Compose:
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BILINEAR), T.ToTensor(),
                      T.Normalize(mean=mean, std=std)])


def _photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colours plus noise: both flat areas and every pixel value occur."""
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 / width, ys * 255 / height, (xs + ys) % 256], axis=2)
    return np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)


def _seeded(seed: int, fn, image):
    """``fn(image)`` with torch's and Python's generators seeded, and the next draw of each afterwards (so that
    two pipelines that consume different numbers of draws are told apart)."""
    torch.manual_seed(seed)
    random.seed(seed)
    out = fn(image)
    return out, torch.rand(1).item(), random.random()


MEAN_STD = [([0.5] * 3, [0.5] * 3), ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]


@pytest.mark.parametrize("mean,std", MEAN_STD)
@pytest.mark.parametrize("shape", [(64, 32), (48, 40), (32, 96)])  # at the size, other sizes (resized)
@pytest.mark.parametrize("flip_prob,padding,erase_prob", [(0.5, 4, 0.5), (1.0, 0, 1.0), (0.0, 7, 0.0)])
def test_train_transform_equals_the_torchvision_pipeline(mean, std, shape, flip_prob, padding, erase_prob):
    size = (64, 32)
    ours = TrainTransform(size, flip_prob, padding, erase_prob, mean, std)
    reference = reference_train(size, flip_prob, padding, erase_prob, mean, std)
    rng = np.random.default_rng(shape[0] * 100 + padding)
    for seed in range(12):
        pixels = _photo(rng, *shape)
        expected = _seeded(seed, reference, Image.fromarray(pixels))
        got = _seeded(seed, ours, pixels)
        assert torch.equal(got[0], expected[0]), f"seed {seed}"
        assert got[1:] == expected[1:], "a different number of random draws"


def test_train_transform_on_a_view_of_a_stitched_image():
    """RGBNT100 parts are column slices of one decoded array: no copy is needed before the transform."""
    stitched = _photo(np.random.default_rng(1), 40, 96)
    part = stitched[:, 32:64]
    assert not part.flags["C_CONTIGUOUS"]
    ours = TrainTransform((64, 32), 0.5, 3, 0.5, [0.5] * 3, [0.5] * 3)
    reference = reference_train((64, 32), 0.5, 3, 0.5, [0.5] * 3, [0.5] * 3)
    for seed in range(6):
        expected = _seeded(seed, reference, Image.fromarray(stitched).crop((32, 0, 64, 40)))
        assert torch.equal(_seeded(seed, ours, part)[0], expected[0])


@pytest.mark.parametrize("mean,std", MEAN_STD)
@pytest.mark.parametrize("shape", [(64, 32), (50, 70)])
def test_eval_transform_equals_the_torchvision_pipeline(mean, std, shape):
    pixels = _photo(np.random.default_rng(2), *shape)
    expected = reference_eval((64, 32), mean, std)(Image.fromarray(pixels))
    assert torch.equal(EvalTransform((64, 32), mean, std)(pixels), expected)


def test_random_crop_origin_draws_like_torchvision():
    for shape, size in [((80, 40), (64, 32)), ((64, 32), (64, 32)), ((64, 50), (64, 32))]:
        torch.manual_seed(3)
        top, left, _, _ = T.RandomCrop.get_params(torch.zeros(3, *shape), size)
        after = torch.rand(1)
        torch.manual_seed(3)
        assert random_crop_origin(shape, size) == (top, left)
        assert torch.equal(torch.rand(1), after)


# ----------------------------------------------------------------------------------------------------------------------
# Decoding.

def _pil_pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _save(path, pixels: np.ndarray, mode: str = "RGB", **options) -> str:
    Image.fromarray(pixels).convert(mode).save(path, **options)
    return str(path)


@pytest.mark.parametrize("mode,options", [
    ("RGB", {"quality": 90}), ("RGB", {"quality": 75, "subsampling": 0}), ("RGB", {"progressive": True}),
    ("L", {}), ("CMYK", {}),
])
@pytest.mark.parametrize("torchcodec", [True, False], ids=["torchcodec", "without-torchcodec"])
def test_jpeg_decoding_gives_pils_pixels(tmp_path, monkeypatch, mode, options, torchcodec):
    """With TorchCodec, and with PIL alone where TorchCodec cannot be loaded (data.loader.decode_jpeg is then None)."""
    import data.loader

    if torchcodec and data.loader.decode_jpeg is None:
        pytest.skip("TorchCodec is not installed here")  # it is in requirements.txt
    if not torchcodec:
        monkeypatch.setattr(data.loader, "decode_jpeg", None)
    path = _save(tmp_path / "a.jpg", _photo(np.random.default_rng(4), 61, 35), mode, **options)
    decoded = read_image(path)
    assert decoded.dtype == np.uint8 and decoded.shape == (61, 35, 3) and decoded.flags["C_CONTIGUOUS"]
    assert np.array_equal(decoded, _pil_pixels(path))


@pytest.mark.parametrize("orientation", [3, 6])
def test_exif_orientation_is_ignored_like_pil(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation  # rotate 180 / 90 degrees: PIL's decoder does not apply it, and neither does ours
    path = _save(tmp_path / "rotated.jpg", _photo(np.random.default_rng(5), 40, 20), exif=exif.tobytes())
    assert read_image(path).shape == (40, 20, 3)
    assert np.array_equal(read_image(path), _pil_pixels(path))


@pytest.mark.parametrize("suffix", [".png", ".bmp"])
def test_other_formats_are_decoded_by_pil(tmp_path, suffix):
    pixels = _photo(np.random.default_rng(6), 20, 10)
    path = _save(tmp_path / f"a{suffix}", pixels)
    assert np.array_equal(read_image(path), pixels)
    grey = _save(tmp_path / f"grey{suffix}", pixels, "L")
    assert np.array_equal(read_image(grey), _pil_pixels(grey))


def test_jpeg_orientation_reads_the_exif_tag():
    pixels = _photo(np.random.default_rng(7), 16, 16)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    assert jpeg_orientation(buffer.getvalue()) == 1  # no EXIF
    assert jpeg_orientation(buffer.getvalue()[:20]) is None  # header cut before the frame
    for orientation in (1, 3, 6, 8):
        for order in ("<", ">"):
            exif = Image.Exif()
            exif.endian = order
            exif[0x0110] = "camera"  # another tag first
            exif[0x0112] = orientation
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif.tobytes())
            assert buffer.getvalue()[:40].find(b"MM" if order == ">" else b"II") > 0
            assert jpeg_orientation(buffer.getvalue()) == orientation
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    assert jpeg_orientation(png.getvalue()) is None
    assert jpeg_orientation(b"") is None


@pytest.mark.parametrize("torchcodec", [True, False], ids=["torchcodec", "without-torchcodec"])
@pytest.mark.parametrize("cut", [0.3, 0.9])
def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path, monkeypatch, cut, torchcodec):
    import data.loader

    if torchcodec and data.loader.decode_jpeg is None:
        pytest.skip("TorchCodec is not installed here")
    if not torchcodec:
        monkeypatch.setattr(data.loader, "decode_jpeg", None)
    path = _save(tmp_path / "cut.jpg", _photo(np.random.default_rng(8), 64, 32))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * cut)])
    with pytest.raises(DatasetError, match="cut.jpg"):
        read_image(path)
