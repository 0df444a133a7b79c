"""Photos as they come (jax3dmmstn.data.photos): folders, globs, formats, EXIF, face boxes."""

import numpy as np
import pytest
from PIL import Image

from jax3dmmstn.data import loaders, photos, preprocess
from jax3dmmstn.data.errors import DataError


def _photo(path, size=(40, 30), mode="RGB", **save):
    rng = np.random.default_rng(0)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path, **save)
    return str(path)


def test_list_photos_takes_folders_globs_and_files(tmp_path):
    a = _photo(tmp_path / "b.jpg")
    b = _photo(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not a photo")
    sub = tmp_path / "more"
    sub.mkdir()
    c = _photo(sub / "c.ppm")
    assert photos.list_photos([str(tmp_path)]) == [b, a]
    assert photos.list_photos([str(tmp_path / "*.jpg"), c]) == [a, c]
    with pytest.raises(DataError, match="empty.*no photo"):
        (tmp_path / "empty").mkdir()
        photos.list_photos([str(tmp_path / "empty")])
    _photo(sub / "a.jpg")
    with pytest.raises(DataError, match="outputs named 'a'"):
        photos.list_photos([str(tmp_path), str(sub)])


def test_read_photo_applies_exif_orientation_and_makes_rgb(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the camera was turned; show rotated 90 degrees clockwise
    rotated = photos.read_photo(_photo(tmp_path / "r.jpg", (40, 30), exif=exif.tobytes()))
    assert rotated.shape == (40, 30, 3) and rotated.dtype == np.uint8
    grey = photos.read_photo(_photo(tmp_path / "g.png", (20, 10), mode="L"))
    assert grey.shape == (10, 20, 3)
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    assert photos.read_photo(_photo(tmp_path / "p.ppm", (8, 6))).shape == (6, 8, 3)
    (tmp_path / "bad.jpg").write_text("not a JPEG")
    with pytest.raises(DataError, match=r"bad\.jpg: not a readable image"):
        photos.read_photo(str(tmp_path / "bad.jpg"))
    with pytest.raises(DataError, match="nope.png: no such file"):
        photos.read_photo(str(tmp_path / "nope.png"))


def test_boxes_file_and_the_order_of_face_boxes(tmp_path):
    boxes_file = tmp_path / "boxes.txt"
    boxes_file.write_text("# name col0 row0 col1 row1\neinstein.jpg 1 2 11 22\nbohr, 0, 0, 5, 5\n")
    boxes = photos.read_boxes(str(boxes_file))
    assert boxes == {"einstein.jpg": (1.0, 2.0, 11.0, 22.0), "bohr": (0.0, 0.0, 5.0, 5.0)}
    photo = _photo(tmp_path / "bohr.png", (60, 50))
    pts = np.array([[11.0, 21.0], [31.0, 41.0]])  # 1-based, y down
    loaders.write_pts(photos.pts_path(photo), pts)
    size = (50, 60)
    assert photos.face_box(photo, size, boxes, (3, 3, 9, 9)) == (0.0, 0.0, 5.0, 5.0)
    assert photos.face_box(photo, size, {}, (3, 3, 9, 9)) == (3.0, 3.0, 9.0, 9.0)
    np.testing.assert_allclose(photos.face_box(photo, size), (10, 20, 30, 40), atol=1e-4)
    assert photos.face_box(photo, size, use_pts=False) is None
    boxes_file.write_text("einstein.jpg 1 2 11\n")
    with pytest.raises(DataError, match=r"boxes.txt:1: expected 'NAME COL0 ROW0 COL1 ROW1'"):
        photos.read_boxes(str(boxes_file))
    with pytest.raises(ValueError, match="COL1 > COL0"):
        photos.check_box((5, 0, 5, 9))


def test_square_crop_maps_the_box_onto_the_output_and_carries_landmarks():
    image = np.zeros((100, 200, 3), np.uint8)
    image[20:40, 50:70] = 255  # a 20 x 20 bright square, pixel centres 50..69, 20..39
    box = (49.5, 19.5, 69.5, 39.5)  # its edges
    size = image.shape[:2]
    corner = preprocess.pixels_to_landmarks(np.array([[50.0, 20.0]]), size)
    out = photos.square_crop(image, box, 20, margin=0.0, landmarks=corner)
    assert out["image"].shape == (20, 20, 3)
    assert out["image"].min() == 255  # exactly the square
    np.testing.assert_allclose(
        preprocess.landmarks_to_pixels(out["landmarks"], (20, 20)), [[0.0, 0.0]], atol=1e-4
    )
    with_margin = photos.square_crop(image, box, 40, margin=0.5)
    assert with_margin["image"][0, 0].max() == 0 and with_margin["image"][20, 20].min() == 255
