"""autoaugment.py: the Fast AutoAugment ImageNet policy file (its table, comments and errors) and the
operations' magnitudes."""
import numpy as np
import pytest
import torch
from PIL import Image

import autoaugment
from utils import UserError


def test_fast_autoaugment_policy_table():
    policy = autoaugment.fast_autoaugment_policy()
    assert len(policy) == 498 and all(len(sub) == 2 for sub in policy)
    for sub in policy:
        for name, prob, magnitude in sub:
            assert name in autoaugment._FAA_RANGES and 0 <= prob <= 1 and 0 <= magnitude <= 1
    assert policy[0] == (("ShearY", 0.14143816458479197, 0.513124791615952),
                         ("Sharpness", 0.9290316227291179, 0.9788406212603302))


def test_fast_autoaugment_operations_map_magnitudes():
    img = Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3))
    same = autoaugment._faa_op(img, "Brightness", 0.5)           # factor 1.0: identity
    assert np.array_equal(np.asarray(same), np.asarray(img))
    posterized = np.asarray(autoaugment._faa_op(img, "Posterize", 0.0))   # 4 bits kept
    assert np.all(posterized % 16 == 0)
    solarized = np.asarray(autoaugment._faa_op(img, "Solarize", 1.0))     # threshold 256: unchanged
    assert np.array_equal(solarized, np.asarray(img))
    torch.manual_seed(0)
    cut = np.asarray(autoaugment._faa_op(img, "Cutout", 1.0))             # side 0.2 * 64 px
    filled = np.all(cut == [125, 123, 114], axis=-1)
    assert 0 < filled.sum() <= 13 * 13 + 30


def test_policy_file_skips_comments_and_names_its_problems(tmp_path):
    path = tmp_path / "policy.txt"
    path.write_text("# a header\n\nShearX 0.5 0.1 ; Invert 0.25 0.75\n")
    assert autoaugment.fast_autoaugment_policy(str(path)) == ((("ShearX", 0.5, 0.1), ("Invert", 0.25, 0.75)),)
    bad = tmp_path / "bad.txt"
    bad.write_text("ShearX 0.5 0.1 ; Invert 0.25 0.75\nShearX 0.5 ; Blur 0.1 0.2\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        autoaugment.fast_autoaugment_policy(str(bad))
    with pytest.raises(UserError, match="missing"):
        autoaugment.fast_autoaugment_policy(str(tmp_path / "absent.txt"))
