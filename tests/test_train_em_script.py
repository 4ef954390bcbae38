"""scripts/train_em_model.py writes a config that describes the model it trained.

Its first runs copied the starting model's ``model_sha256`` and ``default_model: true`` into
the new model's YAML: registered as it was, the new model would have failed its checksum and
claimed to be the default.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import yaml

from empanada_napari.core.models.store import builtin_config_dir

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_em_model.py"


def _script():
    spec = importlib.util.spec_from_file_location("train_em_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trained_config_names_its_own_file_and_checksum(tmp_path):
    base = yaml.safe_load((builtin_config_dir() / "Lucchi_Lite_v1.yaml").read_text())
    assert base["default_model"] and base["model_sha256"]
    model = tmp_path / "Trained.pth"
    model.write_bytes(b"not the base model")
    trained = {"norms": {"mean": 0.5, "std": 0.2}, "padding_factor": 32, "FINETUNE": {"x": 1}}
    config = _script().model_config(base, trained | {"model": "elsewhere.pth"}, model, "new")
    assert config["model"] == "Trained.pth" and config["description"] == "new"
    assert config["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert "default_model" not in config and config["norms"] == trained["norms"]
    assert config["FINETUNE"] == {"x": 1} and config["labels"] == base["labels"]


def test_bundled_second_model_config_is_what_the_script_writes():
    folder = builtin_config_dir()
    shipped = yaml.safe_load((folder / "EM_Lite_v2.yaml").read_text())
    base = yaml.safe_load((folder / "Lucchi_Lite_v1.yaml").read_text())
    expected = _script().model_config(
        base, shipped, folder / "EM_Lite_v2.pth", shipped["description"]
    )
    assert shipped == expected
