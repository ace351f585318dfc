"""MuseTalk models directory: public layout, strict loads, typed errors naming the file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from actors.errors import ModelLoadError
from actors.models.musetalk import files, load_musetalk
from actors.models.musetalk.random_weights import reduced_configs, write_random_models
from actors.models.musetalk.vae import rename_legacy_attention, to_legacy_attention_names


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return write_random_models(tmp_path_factory.mktemp("musetalk_reduced"), reduced=True)


@pytest.fixture
def copy_dir(models_dir, tmp_path):
    dst = tmp_path / "models"
    shutil.copytree(models_dir, dst)
    return dst


def test_random_dir_has_the_public_layout(models_dir):
    for rel in files.REQUIRED_FILES:
        assert (models_dir / rel).is_file(), rel
    vae = torch.load(models_dir / files.VAE_WEIGHTS, weights_only=True)
    attn = sorted(k for k in vae if k.startswith("encoder.mid_block.attentions.0."))
    assert [k.rsplit(".", 2)[-2] for k in attn if k.endswith(".weight")] == [
        "group_norm", "key", "proj_attn", "query", "value"]
    whisper = torch.load(models_dir / files.WHISPER_WEIGHTS, weights_only=True)
    assert any(k.startswith("model.encoder.layers.3.") for k in whisper)
    assert any(k.startswith("model.decoder.") for k in whisper)  # a whole WhisperForConditionalGeneration
    unet = torch.load(models_dir / files.UNET_WEIGHTS, weights_only=True)
    assert "conv_in.weight" in unet and unet["conv_in.weight"].shape[1] == 8
    assert any(".attn2.to_k.weight" in k for k in unet)  # diffusers names, no prefix


def test_legacy_attention_names_round_trip():
    state = {"encoder.mid_block.attentions.0.to_out.0.weight": torch.zeros(2, 2),
             "decoder.mid_block.attentions.0.to_q.bias": torch.zeros(2),
             "encoder.conv_in.weight": torch.zeros(1)}
    old = to_legacy_attention_names(state)
    assert set(old) == {"encoder.mid_block.attentions.0.proj_attn.weight",
                        "decoder.mid_block.attentions.0.query.bias", "encoder.conv_in.weight"}
    assert set(rename_legacy_attention(old)) == set(state)
    conv = rename_legacy_attention({"x.attentions.0.key.weight": torch.zeros(4, 4, 1, 1)})
    assert conv["x.attentions.0.to_k.weight"].shape == (4, 4)


def test_loads_strictly_and_vae_with_current_names_loads_too(copy_dir):
    m = load_musetalk(copy_dir)
    assert m.dtype == torch.float32 and m.device == "cpu"
    assert tuple(m.position_encoding.shape) == (50, reduced_configs()[2]["d_model"])
    state = torch.load(copy_dir / files.VAE_WEIGHTS, weights_only=True)
    torch.save(rename_legacy_attention(state), copy_dir / files.VAE_WEIGHTS)
    load_musetalk(copy_dir)


@pytest.mark.parametrize("rel", files.REQUIRED_FILES)
def test_missing_file_is_named_without_the_server_path(copy_dir, rel):
    (copy_dir / rel).unlink()
    with pytest.raises(ModelLoadError) as info:
        load_musetalk(copy_dir)
    assert rel in str(info.value) and "missing" in str(info.value)
    assert str(copy_dir) not in str(info.value)


def test_corrupt_weights_are_named(copy_dir):
    (copy_dir / files.UNET_WEIGHTS).write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    with pytest.raises(ModelLoadError, match="musetalkV15/unet.pth.*Git LFS"):
        load_musetalk(copy_dir)
    (copy_dir / files.UNET_WEIGHTS).write_bytes(b"\x00" * 100)
    with pytest.raises(ModelLoadError, match="musetalkV15/unet.pth") as info:
        load_musetalk(copy_dir)
    assert str(copy_dir) not in str(info.value)


def test_weights_that_do_not_fit_the_config_are_refused(copy_dir):
    cfg = json.loads((copy_dir / files.UNET_CONFIG).read_text())
    cfg["block_out_channels"] = [32, 64, 64, 64]
    (copy_dir / files.UNET_CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="musetalkV15/unet.pth.*wrong shape"):
        load_musetalk(copy_dir)


def test_bad_configs_are_named(copy_dir):
    (copy_dir / files.VAE_CONFIG).write_text("{not json")
    with pytest.raises(ModelLoadError, match="sd-vae/config.json"):
        load_musetalk(copy_dir)
    (copy_dir / files.VAE_CONFIG).write_text(json.dumps({"latent_channels": 4, "block_out_channels": [8, 16]}))
    with pytest.raises(ModelLoadError, match="sd-vae/config.json"):
        load_musetalk(copy_dir)


def test_whisper_checkpoint_without_encoder_and_unknown_unet_keys(copy_dir, models_dir):
    torch.save({"model.decoder.x": torch.zeros(1)}, copy_dir / files.WHISPER_WEIGHTS)
    with pytest.raises(ModelLoadError, match="whisper/pytorch_model.bin.*no whisper encoder"):
        load_musetalk(copy_dir)
    shutil.copy(models_dir / files.WHISPER_WEIGHTS, copy_dir / files.WHISPER_WEIGHTS)
    state = torch.load(copy_dir / files.UNET_WEIGHTS, weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    del state["conv_in.bias"]
    torch.save(state, copy_dir / files.UNET_WEIGHTS)
    with pytest.raises(ModelLoadError, match="1 missing key.*conv_in.bias.*1 unexpected key.*extra.weight"):
        load_musetalk(copy_dir)


def test_missing_models_dir(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        load_musetalk(tmp_path / "nope")
    assert str(tmp_path) not in str(info.value)
