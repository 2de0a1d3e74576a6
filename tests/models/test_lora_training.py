"""The LoRA training loop on tiny-sd (models/lora_training.py): no Ray, no HTTP."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.errors import InputError
from models.lora_training import Example, LoraTrainer, TrainingConfig, check_config


@pytest.fixture(scope="module")
def base(zoo_dir):
    from models import zoo

    return zoo.ensure("tiny-sd", zoo_dir)


def _examples(n=3):
    rng = np.random.default_rng(0)
    return [Example(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8), "zqx, a house")
            for _ in range(n)]


CONFIG = TrainingConfig(steps=4, rank=4, batch_size=2, resolution=32, learning_rate=1e-2,
                        sample_steps=2)


def test_resuming_from_a_checkpoint_repeats_the_interrupted_run(base):
    first = LoraTrainer(base, CONFIG, _examples())
    losses = [first.step(), first.step()]
    checkpoint = first.checkpoint()
    losses += [first.step(), first.step()]
    assert all(math.isfinite(x) for x in losses)
    resumed = LoraTrainer(base, CONFIG, _examples())
    assert resumed.restore(checkpoint) == 2
    assert [resumed.step(), resumed.step()] == pytest.approx(losses[2:], rel=1e-5)


def test_the_adapter_is_a_lora_file_that_changes_the_image(base, tmp_path):
    from models.lora import LORA_FILE, read_lora_file

    trainer = LoraTrainer(base, CONFIG, _examples())
    before = trainer.sample("zqx").astype(np.int16)
    for _ in range(4):
        trainer.step()
    after = trainer.sample("zqx").astype(np.int16)
    assert after.shape == (32, 32, 3) and np.abs(after - before).mean() > 0.5
    (tmp_path / LORA_FILE).write_bytes(trainer.adapter_bytes())
    state = read_lora_file(tmp_path)
    assert state and all("lora" in k for k in state)


@pytest.mark.parametrize(("field", "value"), [
    ("rank", 0), ("learning_rate", 0.0), ("learning_rate", -1e-4), ("steps", 10_001),
    ("batch_size", 0), ("resolution", 60), ("alpha", -1.0)])
def test_bad_hyperparameters_name_their_field(field, value):
    with pytest.raises(InputError) as err:
        check_config(TrainingConfig(**{**vars(CONFIG), field: value}), max_steps=10_000)
    assert err.value.param == field


def test_an_empty_dataset_is_refused(base):
    with pytest.raises(InputError, match="no images"):
        LoraTrainer(base, CONFIG, [])
