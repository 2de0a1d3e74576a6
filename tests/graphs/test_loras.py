"""LoRA registration logic (graphs/loras.py) on a real record store (SQLite), a real asset
store (local folder) and the real check: the tiny SD model loading the file."""

from __future__ import annotations

import asyncio
import os

import pytest

from graphs.errors import ApiError
from graphs.loras import LoraService
from models.diffusion import DiffusionModel
from models.lora import parse_lora_bytes
from storage.assets import LocalAssetStore
from storage.records import RecordStore
from tests.lora_files import other_unet_lora, tiny_lora


@pytest.fixture(scope="module")
def model(zoo_dir):
    return DiffusionModel.from_name("tiny-sd", zoo_dir=str(zoo_dir))


@pytest.fixture(scope="module")
def good(zoo_dir, tmp_path_factory) -> bytes:
    return tiny_lora(zoo_dir, tmp_path_factory.mktemp("good"), seed=11)


def _service(model, tmp_path, **kwargs) -> LoraService:
    async def validate(data: bytes, base: str) -> dict:
        return await asyncio.to_thread(model.check_adapter, parse_lora_bytes(data))

    async def served_base() -> str:
        return "tiny-sd"

    records = RecordStore(f"sqlite:///{tmp_path / 'records.db'}")
    return LoraService(records=records, assets=LocalAssetStore(tmp_path / "assets"),
                       validate=validate, served_base=served_base, **kwargs)


def _status(call) -> ApiError:
    with pytest.raises(ApiError) as info:
        asyncio.run(call)
    return info.value


def test_register_stores_file_and_record_seen_by_another_replica_and_after_a_restart(
        model, good, tmp_path):
    service = _service(model, tmp_path)
    record = asyncio.run(service.register_lora(
        name="my-style", data=good, project="default", meta={"dataset_id": "ds_1"},
        trigger_words=["mystyle"], default_weight=0.7))
    assert (record.base, record.rank, record.size_bytes) == ("tiny-sd", 4, len(good))
    assert record.key.startswith("default/loras/") and record.key.endswith(".safetensors")
    assert service.assets.get(key=record.key) == good
    assert service.specs("tiny-sd")["my-style"].default_weight == 0.7
    # another ingress replica, or this one after a restart: a new service on the same stores
    other = _service(model, tmp_path)
    seen = asyncio.run(other.refresh())
    assert seen["my-style"].meta == {"dataset_id": "ds_1"}
    assert seen["my-style"].sha256 == record.sha256
    assert other.specs("sd15") == {}  # only where it fits

    clash = _status(other.register_lora(name="my-style", data=good, project="default"))
    assert clash.status == 409 and "already registered" in clash.message
    builtin = _status(other.register_lora(name="tiny-lora-warm", data=good, project="p"))
    assert builtin.status == 409 and "built-in" in builtin.message
    assert _status(other.register_lora(name="No!", data=good, project="p")).status == 400

    # another project's key may not delete it; its own may; built-ins never
    assert _status(other.delete_lora("my-style", project="other", admin=False)).status == 404
    assert _status(other.delete_lora("tiny-lora-warm", project="default",
                                     admin=True)).status == 400
    asyncio.run(other.delete_lora("my-style", project="default", admin=False))
    assert asyncio.run(service.refresh(force=True)) == {}
    assert not (tmp_path / "assets" / record.key).exists()


def test_bad_files_limits_and_a_failed_record_leave_nothing(model, good, tmp_path,
                                                            monkeypatch):
    service = _service(model, tmp_path, max_bytes=len(good) - 1)
    too_big = _status(service.register_lora(name="big", data=good, project="default"))
    assert too_big.status == 413 and too_big.param == "file"
    service.max_bytes = 10 * len(good)
    wrong = _status(service.register_lora(name="wrong", data=other_unet_lora(tmp_path / "w"),
                                          project="default"))
    assert wrong.status == 400 and wrong.code == "lora_does_not_fit"
    pickle = _status(service.register_lora(name="pkl", data=good, project="default",
                                           filename="x.ckpt"))
    assert pickle.status == 400 and "pickle" in pickle.message
    not_served = _status(service.register_lora(name="x1", data=good, project="default",
                                               base="sdxl"))
    assert not_served.status == 400 and not_served.code == "base_not_served"

    def broken(**_kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(service.records, "create_lora", broken)
    with pytest.raises(RuntimeError):
        asyncio.run(service.register_lora(name="half", data=good, project="default"))
    stored = [p for p in (tmp_path / "assets").rglob("*") if p.is_file()]
    assert stored == []  # the file went again: no file without its record


def test_server_paths_only_under_the_import_folders(model, good, tmp_path):
    imports = tmp_path / "imports"
    imports.mkdir()
    (imports / "ok.safetensors").write_bytes(good)
    (imports / "x.pt").write_bytes(b"\x80\x04not read")
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(good)
    os.symlink(secret, imports / "link.safetensors")
    off = _service(model, tmp_path)
    assert _status(off.read_path(str(imports / "ok.safetensors"))).code == "path_not_allowed"
    service = _service(model, tmp_path, import_dirs=[imports])
    data, name = asyncio.run(service.read_path(str(imports / "ok.safetensors")))
    assert (data, name) == (good, "ok.safetensors")
    for path in (secret, imports / ".." / "secret.safetensors", imports / "link.safetensors"):
        assert _status(service.read_path(str(path))).code == "path_not_allowed"
    assert "pickle" in _status(service.read_path(str(imports / "x.pt"))).message
    assert _status(service.read_path(str(imports / "none.safetensors"))).code == \
        "file_not_found"


def test_unusable_paths_are_400s(model, tmp_path):
    service = _service(model, tmp_path, import_dirs=[tmp_path])
    for path in ("~nobody-here-at-all/x.safetensors", "a\0b.safetensors",
                 str(tmp_path / ("x" * 300 + ".safetensors"))):
        error = _status(service.read_path(path))
        assert error.status == 400 and error.param == "path", (path, error.message)
