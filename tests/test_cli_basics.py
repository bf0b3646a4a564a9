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
    assert "transformers" in out and "peft" in out  # ours: torch's report does not list them
    assert "PyTorch version" in out and "Is CUDA available" in out  # torch.utils.collect_env's


def test_provenance_records_the_cuda_stack():
    from mbias.provenance import provenance

    prov = provenance(device="cpu")
    assert prov["versions"]["torch"] and prov["device"] == "cpu"
    assert {"os", "cuda_compiled", "cudnn", "gpus"} <= set(prov["system"])


def test_list_probes_needs_no_model_and_defines_every_probe(capsys):
    from mbias.probes import PROBES

    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "--list-probes"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].split(" ")[0] for line in lines] == PROBES.names()
    assert all(len(line) > 40 for line in lines)  # each with its definition


def _one_line(exc: Exception) -> str:
    msg = str(exc)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_missing_model_folder_is_one_actionable_line(tmp_path):
    from mbias.models import load_model

    with pytest.raises(ModelLoadError) as err:
        load_model(str(tmp_path / "no-such-model"))
    assert "no model folder" in _one_line(err.value)


def test_folder_without_config_is_explained(tmp_path):
    from mbias.models import load_model

    with pytest.raises(ModelLoadError) as err:
        load_model(str(tmp_path))
    assert "config.json" in _one_line(err.value)


def test_text_only_model_is_refused_with_the_supported_families(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from mbias.models import load_model

    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError) as err:
        load_model(str(tmp_path))
    msg = _one_line(err.value)
    assert "takes no images" in msg and "llava" in msg and "qwen2_vl" in msg


def test_quantized_loading_on_cpu_is_refused_clearly(tiny_model_dir):
    from mbias.models import load_model

    with pytest.raises(ModelLoadError) as err:
        load_model(tiny_model_dir("llava"), device="cpu", load_in_4bit=True)
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
    from mbias.config import build_config
    from mbias.errors import ConfigError
    from mbias.finetune.recipes.msam import MSAMConfig

    assert build_config(MSAMConfig, {"rho": 0.1}).rho == 0.1
    with pytest.raises(ConfigError, match="did you mean 'rho'"):
        build_config(MSAMConfig, {"rh0": 0.1}, where="recipe_config")


# --- bad settings and outputs are refused before any work, in one line, with exit code 2 -------------------------

BAD_NUMBERS = [  # (config class, field, bad value, the valid range as the message states it)
    ("mbias.finetune.config.FinetuneConfig", "learning_rate", -1e-4, "a number > 0"),
    ("mbias.finetune.config.FinetuneConfig", "learning_rate", "2e-4", "a number > 0"),  # YAML reads 2e-4 as a string
    ("mbias.finetune.config.FinetuneConfig", "lora_r", 0, "an integer >= 1"),
    ("mbias.finetune.config.FinetuneConfig", "lora_alpha", 0, "an integer >= 1"),
    ("mbias.finetune.config.FinetuneConfig", "lora_dropout", 1.0, "a number in [0, 1)"),
    ("mbias.finetune.config.FinetuneConfig", "max_steps", 0, ">= 1, or -1"),
    ("mbias.finetune.config.FinetuneConfig", "per_device_train_batch_size", 0, "an integer >= 1"),
    ("mbias.finetune.config.FinetuneConfig", "gradient_accumulation_steps", 2.5, "an integer >= 1"),
    ("mbias.finetune.config.FinetuneConfig", "max_train_samples", -5, "an integer >= 1 or unset"),
    ("mbias.finetune.config.FinetuneConfig", "num_train_epochs", 0, "a number > 0"),
    ("mbias.finetune.config.FinetuneConfig", "warmup_steps", -0.5, "a number >= 0"),
    ("mbias.finetune.config.FinetuneConfig", "eval_samples", 0, "an integer >= 1"),
    ("mbias.finetune.config.FinetuneConfig", "save_steps", -1, "a number > 0"),
    ("mbias.finetune.config.FinetuneConfig", "weight_decay", float("nan"), "a number >= 0"),
    ("mbias.finetune.config.FinetuneConfig", "max_grad_norm", -1.0, "a number >= 0"),
    ("mbias.finetune.config.FinetuneConfig", "seed", -1, "an integer >= 0"),
    ("mbias.models.config.ScoringConfig", "patch_grid", 0, "an integer >= 1"),
    ("mbias.models.config.ScoringConfig", "batch_size", True, "an integer >= 1"),
    ("mbias.models.config.ScoringConfig", "max_new_tokens", 0, "an integer >= 1"),
    ("mbias.models.config.ScoringConfig", "noise_std", -0.1, "a number >= 0"),
    ("mbias.diagnose.config.AuditConfig", "max_samples", 0, "an integer >= 1 or unset"),
    ("mbias.diagnose.config.AuditConfig", "verdict_margin", 0.5, "a number in [0, 0.5)"),
    ("mbias.diagnose.config.AuditConfig", "report_examples", -1, "an integer >= 0"),
    ("mbias.probes.mm_shap.MMShapConfig", "n_permutations", 0, "an integer >= 1"),
    ("mbias.probes.mm_shap.MMShapConfig", "grid", 0, "an integer >= 1 or unset"),
    ("mbias.probes.mm_shap.MMShapConfig", "kernel_samples", 0, "an integer >= 1"),
    ("mbias.probes.degradation.DegradationConfig", "draws", 0, "an integer >= 1"),
    ("mbias.probes.degradation.DegradationConfig", "rates", [0.5, 1.0], "numbers in [0, 1)"),
    ("mbias.probes.pdm.PDMConfig", "max_new_tokens", 0, "an integer >= 1"),
    ("mbias.probes.ablation.AblationConfig", "conditions", ["full", "no_imag"], "a non-empty list of full"),
]


@pytest.mark.parametrize("path,field,value,valid", BAD_NUMBERS, ids=[f"{p.rsplit('.', 1)[1]}.{f}={v!r}"
                                                                      for p, f, v, _ in BAD_NUMBERS])
def test_a_bad_number_names_the_field_the_value_and_the_range(path, field, value, valid):
    import importlib

    from mbias.errors import ConfigError

    module, name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(ConfigError) as err:
        cls(**{field: value})
    msg = _one_line(err.value)
    assert f"{name}.{field} must be" in msg and valid in msg and f"got {value!r}" in msg


def _refused(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mbias: error: ") and err.count("\n") == 1
    return err


@pytest.mark.parametrize("argv,field", [
    (["finetune", "--recipe", "plain", "--learning-rate", "-1"], "FinetuneConfig.learning_rate"),
    (["finetune", "--recipe", "plain", "--lora-r", "0"], "FinetuneConfig.lora_r"),
    (["audit", "--patch-grid", "0"], "ScoringConfig.patch_grid"),
    (["audit", "--max-samples", "0"], "AuditConfig.max_samples"),
])
def test_bad_numbers_on_the_command_line_stop_before_any_work(argv, field, tmp_path, capsys):
    out = tmp_path / "out"
    cmd, *flags = argv
    err = _refused(capsys, [cmd, "--model", "zoo:shapes-p90", "--data", "synth:shapes-p90/train", "--out", str(out),
                            *flags])
    assert field in err
    assert not out.exists()


def test_bad_probe_setting_in_a_config_file_stops_the_audit_before_any_work(tmp_path, capsys):
    cfg = tmp_path / "audit.yaml"
    cfg.write_text("probe_config:\n  mm_shap:\n    n_permutations: 0\n")
    out = tmp_path / "out"
    err = _refused(capsys, ["audit", "--model", "zoo:shapes-p90", "--data", "synth:shapes-p90/test-cp",
                            "--out", str(out), "--config", str(cfg)])
    assert "MMShapConfig.n_permutations must be an integer >= 1; got 0" in err
    assert not out.exists()


def test_config_file_that_is_not_utf8_names_the_line(tmp_path):
    from mbias.config import load_yaml
    from mbias.errors import ConfigError

    cfg = tmp_path / "audit.yaml"
    cfg.write_bytes(b"seed: 1\nprobes: caf\xe9\n")
    with pytest.raises(ConfigError) as err:
        load_yaml(cfg)
    assert f"{cfg} line 2: not valid UTF-8" in _one_line(err.value)


def test_data_file_that_is_not_utf8_is_refused_without_an_output_folder(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b'{"id": "a", "image": "x.png", "question": "caf\xe9?", "answer": "b"}\n')
    out = tmp_path / "out"
    err = _refused(capsys, ["audit", "--model", "zoo:shapes-p90", "--data", str(data), "--out", str(out)])
    assert f"{data} line 1: not valid UTF-8" in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["audit", "finetune"])
def test_an_output_path_that_is_a_file_is_refused_and_left_alone(command, tmp_path, capsys):
    out = tmp_path / "results"
    out.write_text("not a folder")
    err = _refused(capsys, [command, "--model", "zoo:shapes-p90", "--data", "synth:shapes-p90/train",
                            "--out", str(out)])
    assert f"output folder {out} is a file" in err and "--out" in err
    assert out.read_text() == "not a folder"
    err = _refused(capsys, [command, "--model", "zoo:shapes-p90", "--data", "synth:shapes-p90/train",
                            "--out", str(out / "inside")])
    assert f"{out} is a file" in err


@pytest.mark.parametrize("command", ["audit", "finetune"])
def test_an_output_folder_that_is_not_writable_is_refused(command, tmp_path, capsys, monkeypatch):
    import os

    import mbias.outdir

    locked = tmp_path / "locked"
    locked.mkdir()
    # chmod does not stop root (these tests may run as root): ask os.access the way a read-only mount answers
    monkeypatch.setattr(mbias.outdir.os, "access", lambda path, mode: os.fspath(path) != str(locked))
    for out in (locked, locked / "new"):
        err = _refused(capsys, [command, "--model", "zoo:shapes-p90", "--data", "synth:shapes-p90/train",
                                "--out", str(out)])
        assert str(locked) in err and "not writable" in err
    assert list(locked.iterdir()) == []


def test_audit_maps_the_columns_of_a_saved_hf_dataset(tiny_model_dir, tmp_path, capsys):
    import json

    datasets = pytest.importorskip("datasets")
    from PIL import Image

    # MMStar's shape: options in the question, the answer a letter, the id under another name
    question = "Which colour is the picture?\nA. red\nB. blue"
    datasets.Dataset.from_dict({"image": [Image.new("RGB", (16, 16), (255, 0, 0))] * 2,
                                "question": [question] * 2, "answer": ["A", "A"], "index": [3, 4]}
                               ).save_to_disk(tmp_path / "hf")
    out = tmp_path / "audit"
    assert main(["audit", "--model", tiny_model_dir("llava"), "--data", str(tmp_path / "hf"), "--out", str(out),
                 "--columns", "id=index", "--probes", "modality_shapley", "--no-report", "--no-progress"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["columns"] == {"id": "index"}
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["3", "4"] and {r["prediction"] for r in records} <= {"A", "B"}


def test_dtype_auto_means_the_checkpoints_own_as_in_transformers(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mbias.models import load_model

    folder = tmp_path / "bf16"
    AutoModelForImageTextToText.from_pretrained(tiny_model_dir("llava"), dtype=torch.bfloat16).save_pretrained(folder)
    AutoProcessor.from_pretrained(tiny_model_dir("llava")).save_pretrained(folder)
    assert load_model(str(folder), device="cpu", dtype="auto").model.dtype == torch.bfloat16
    assert load_model(str(folder), device="cpu").model.dtype == torch.float32  # default "device": float32 on CPU
