from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backend.config import OPTION_DEFAULTS, Options, Settings
from backend.devices import DevicePolicy
from backend.errors import InvalidRequest


def test_defaults_follow_a1111(tmp_path: Path) -> None:
    s = Settings.from_args(["--data-dir", str(tmp_path)], env={})
    assert s.bind_host == "127.0.0.1" and s.bind_port == 7860
    assert s.models_dir == tmp_path / "models"
    assert s.checkpoint_dir == tmp_path / "models" / "Stable-diffusion"
    assert s.config_file == tmp_path / "config.json"


def test_server_flags() -> None:
    s = Settings.from_args(["--listen", "--nowebui", "--api-auth", "u:p"], env={})
    assert s.bind_host == "0.0.0.0" and s.bind_port == 7861 and s.api_auth == "u:p"
    assert Settings.from_args(["--listen", "--server-name", "10.0.0.2", "--port", "9000"], env={}).bind_host == "10.0.0.2"


def test_commandline_args_env_is_appended() -> None:
    s = Settings.from_args([], env={"COMMANDLINE_ARGS": "--port 7999 --no-half"})
    assert s.port == 7999 and s.no_half


def test_unknown_flag_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        Settings.from_args(["--no-such-flag"], env={})
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_legacy_flags_are_accepted() -> None:
    Settings.from_args(["--xformers", "--medvram", "--opt-sdp-attention", "--skip-torch-cuda-test"], env={})


def test_unsafe_unpickle_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="weights_only"):
        Settings.from_args(["--disable-safe-unpickle"], env={})


def test_device_policy() -> None:
    cpu = DevicePolicy.from_settings(Settings.from_args([], env={}), cuda_available=False)
    assert cpu.device.type == "cpu" and cpu.dtype == torch.float32
    gpu = DevicePolicy.from_settings(Settings.from_args(["--device-id", "1"], env={}), cuda_available=True)
    assert gpu.device.index == 1 and gpu.dtype == torch.float16 and gpu.vae_dtype == torch.float16
    full = DevicePolicy.from_settings(Settings.from_args(["--no-half"], env={}), cuda_available=True)
    assert full.dtype == torch.float32
    vae = DevicePolicy.from_settings(Settings.from_args(["--no-half-vae"], env={}), cuda_available=True)
    assert vae.dtype == torch.float16 and vae.vae_dtype == torch.float32
    forced = DevicePolicy.from_settings(Settings.from_args(["--use-cpu", "all"], env={}), cuda_available=True)
    assert forced.device.type == "cpu"


def test_options_defaults_persist_and_keep_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"some_extension_option": 5, "samples_format": "jpg"}))
    opts = Options(path)
    assert opts["samples_format"] == "jpg"
    assert opts["CLIP_stop_at_last_layers"] == 1
    assert opts["eta_noise_seed_delta"] == 0
    assert set(OPTION_DEFAULTS) <= set(opts)
    opts.set("CLIP_stop_at_last_layers", "2")
    opts.save()
    saved = json.loads(path.read_text())
    assert saved == {"some_extension_option": 5, "samples_format": "jpg", "CLIP_stop_at_last_layers": 2}
    assert Options(path)["CLIP_stop_at_last_layers"] == 2


def test_overrides_do_not_touch_the_store(tmp_path: Path) -> None:
    opts = Options(tmp_path / "config.json")
    view = opts.with_overrides({"CLIP_stop_at_last_layers": 2, "randn_source": "CPU"})
    assert view["CLIP_stop_at_last_layers"] == 2 and view["randn_source"] == "CPU"
    assert opts["CLIP_stop_at_last_layers"] == 1 and opts["randn_source"] == "GPU"


@pytest.mark.parametrize("key,value", [("CLIP_stop_at_last_layers", "two"), ("samples_save", "maybe"),
                                       ("eta_ddim", [1]), ("samples_format", 3)])
def test_bad_option_values_name_the_key(tmp_path: Path, key: str, value: object) -> None:
    with pytest.raises(InvalidRequest) as e:
        Options(tmp_path / "c.json").set(key, value)
    assert e.value.field == key
