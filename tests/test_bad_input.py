"""Every kind of bad input a user can hand flowpp gets an error that names the problem and the fix.

One test per case, asserting the message (issue: reliability). The same checks are exercised where each piece is
built, in the notebooks; this file is the checklist in one place.
"""
import numpy as np
import pytest
import torch

from flowpp.data import ImageDataset, load_dataset, load_npz_shards, reduce_bits
from flowpp.model import FlowPlusPlus, get_config
from flowpp.train import TrainConfig, Trainer, load_checkpoint


@pytest.fixture(scope="module")
def model():
    return FlowPlusPlus.from_config("tiny").eval()  # images (3, 8, 8), 256 levels


def test_wrong_dtype(model):
    with pytest.raises(TypeError, match="must hold integer pixel values .* convert with"):
        model.log_prob(torch.rand(2, 3, 8, 8))


def test_nan_pixels(model):
    x = torch.full((2, 3, 8, 8), float("nan"))
    with pytest.raises(TypeError, match="must hold integer pixel values"):
        model.log_prob(x)
    with pytest.raises(TypeError, match="must be uint8 pixel values"):
        ImageDataset(x, None, 256, "nan")


def test_wrong_shape(model):
    with pytest.raises(ValueError, match=r"must be shaped \(B, C, H, W\) = \(B, 3, 8, 8\), got \(2, 8, 8\)"):
        model.log_prob(torch.zeros(2, 8, 8, dtype=torch.uint8))


def test_wrong_channel_count(model):
    with pytest.raises(ValueError, match=r"= \(B, 3, 8, 8\), got \(2, 1, 8, 8\)"):
        model.log_prob(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))


def test_value_range(model):
    with pytest.raises(ValueError, match=r"values in \[0, 255\].*max 300"):
        model.log_prob(torch.full((1, 3, 8, 8), 300, dtype=torch.int64))
    with pytest.raises(ValueError, match="num_levels=17"):
        ImageDataset(torch.full((1, 1, 8, 8), 20, dtype=torch.uint8), None, 17, "digits")


def test_odd_sizes_a_squeeze_cannot_take():
    with pytest.raises(ValueError, match="'squeeze' needs even height and width"):
        get_config("tiny", image_shape=(3, 6, 6), stages=("stripes:1", "squeeze", "squeeze"))
    with pytest.raises(ValueError, match="cannot split a .* tensor in two equal halves"):
        get_config("cifar10", image_shape=(3, 30, 30))


def test_wrong_number_of_bits(tmp_path):
    data = ImageDataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), None, 256, "x")
    with pytest.raises(ValueError, match="bits must be between 1 and 8"):
        reduce_bits(data, 9)
    digits = load_dataset("digits")  # 17 levels: the model's levels must match the data's
    with pytest.raises(ValueError, match="pick a matching model or set model_overrides"):
        Trainer(TrainConfig(max_steps=1, dataset="digits", model="digits", out_dir=str(tmp_path),
                            model_overrides={"num_levels": 32}))
    assert digits.num_levels == 17


def test_empty_and_missing_datasets(tmp_path):
    with pytest.raises(ValueError, match="is empty"):
        ImageDataset(torch.zeros(0, 3, 8, 8, dtype=torch.uint8), None, 256, "empty")
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 train data|not found"):
        load_dataset("cifar10", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no .* files matching"):
        load_npz_shards(tmp_path)


def test_npz_missing_keys(tmp_path):
    np.savez(tmp_path / "train_00.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(KeyError, match=r"has no \['x'\] array \(it holds \['images'\]\); each shard needs"):
        load_npz_shards([tmp_path / "train_00.npz"])


def test_config_name_that_does_not_exist():
    with pytest.raises(ValueError, match="unknown config 'cifar100'; choose one of"):
        FlowPlusPlus.from_config("cifar100")
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


def test_corrupt_checkpoint(tmp_path):
    path = tmp_path / "ckpt_00000001.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(RuntimeError, match="corrupt or truncated"):
        load_checkpoint(path)
