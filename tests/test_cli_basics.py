"""The CLI skeleton and the one-line errors for bad model and image input."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mbias.cli import main
from mbias.errors import DataError, ModelLoadError
from mbias.example import Example, open_image

SUBCOMMANDS = ["audit", "report", "finetune", "synth", "zoo", "demo", "env"]


def test_parsing_the_cli_does_not_import_torch():
    code = "import sys; from mbias.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_answers_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: mbias " + command in capsys.readouterr().out


def test_env_lists_versions_and_devices(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "transformers" in out and "devices" in out and "cpu" in out


def _one_line(exc: Exception) -> str:
    msg = str(exc)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_missing_model_folder_is_one_actionable_line(tmp_path):
    from mbias.models import load_adapter

    with pytest.raises(ModelLoadError) as err:
        load_adapter(str(tmp_path / "no-such-model"))
    assert "no model folder" in _one_line(err.value)


def test_folder_without_config_is_explained(tmp_path):
    from mbias.models import load_adapter

    with pytest.raises(ModelLoadError) as err:
        load_adapter(str(tmp_path))
    assert "config.json" in _one_line(err.value)


def test_text_only_model_is_refused_with_the_supported_families(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from mbias.models import load_adapter

    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError) as err:
        load_adapter(str(tmp_path))
    msg = _one_line(err.value)
    assert "takes no images" in msg and "llava" in msg and "qwen2_vl" in msg


def test_quantized_loading_on_cpu_is_refused_clearly(tiny_model_dir):
    from mbias.models import load_adapter

    with pytest.raises(ModelLoadError) as err:
        load_adapter(tiny_model_dir("llava"), device="cpu", load_in_4bit=True)
    assert "CUDA" in _one_line(err.value)


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_text("this is not a png")
    with pytest.raises(DataError) as err:
        open_image(bad)
    assert str(bad) in _one_line(err.value)
    with pytest.raises(DataError) as err:
        Example(id="x", image=tmp_path / "missing.png", question="q", answer="a").load_image()
    assert "does not exist" in _one_line(err.value)


def test_image_modes_and_exif_orientation_are_normalised(tmp_path):
    from PIL import Image

    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 0))
    assert open_image(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, not black
    assert open_image(Image.new("L", (3, 3), 7)).mode == "RGB"
    assert open_image(Image.new("P", (3, 3))).mode == "RGB"
    img = Image.new("RGB", (4, 2), (0, 255, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert open_image(tmp_path / "rot.jpg").size == (2, 4)


def test_misspelt_config_field_is_an_error_with_a_suggestion():
    from mbias.finetune.recipes.msam import MSAMConfig

    from mbias.config import build_config
    from mbias.errors import ConfigError

    assert build_config(MSAMConfig, {"rho": 0.1}).rho == 0.1
    with pytest.raises(ConfigError, match="did you mean 'rho'"):
        build_config(MSAMConfig, {"rh0": 0.1}, where="recipe_config")
