import importlib
import os
import subprocess
import sys
from pathlib import Path

import tomllib

from nnunet_ext.paths import TRAINERS_DIR, ext_trainer_path, nnunet_environment

REPO = Path(__file__).resolve().parents[1]


def test_import_and_subpackages():
    import nnunet_ext.dataset_conversion
    import nnunet_ext.evaluation
    import nnunet_ext.plans

    assert nnunet_ext.__version__
    # the three top-level folders are installed as nnunet_ext sub-packages, nothing generic in site-packages
    assert Path(nnunet_ext.evaluation.__file__).parent == REPO / "evaluation"
    assert Path(nnunet_ext.dataset_conversion.__file__).parent == REPO / "dataset_conversion"
    assert Path(nnunet_ext.plans.__file__).parent == REPO / "plans"


def test_every_package_folder_is_declared_in_pyproject():
    """A package missing from pyproject imports in an editable install but is absent from a wheel."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for package, folder in mapping.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            name = ".".join([package, *rel.parts]) if rel.parts else package
            if not any(name.startswith(other + ".") or name == other
                       for other in mapping if other != package and len(other) > len(package)):
                found.add(name)
    assert found == declared


def test_env_keeps_set_values_and_puts_our_trainers_first(tmp_path):
    env = nnunet_environment({"nnUNet_raw": "/data/raw", "nnUNet_extTrainer": "/mine"}, root=tmp_path)
    assert env["nnUNet_raw"] == "/data/raw"
    assert env["nnUNet_preprocessed"] == str(tmp_path / "nnUNet_preprocessed")
    assert env["nnUNet_results"] == str(tmp_path / "nnUNet_results")
    assert env["nnUNet_extTrainer"].split(os.pathsep) == [str(TRAINERS_DIR), "/mine"]
    # idempotent: running it twice does not add our folder twice
    assert ext_trainer_path(env["nnUNet_extTrainer"]) == env["nnUNet_extTrainer"]


def test_env_command_prepares_a_shell(tmp_path):
    """eval "$(nnunet_ext env)" exports the four variables nnU-Net reads."""
    cli = Path(sys.executable).parent / "nnunet_ext"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    environ["NNUNET_EXT_DATA"] = str(tmp_path / "data dir")  # a space must survive the quoting
    script = f'eval "$("{cli}" env)"; printf "%s\\n" "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results" ' \
             f'"$nnUNet_extTrainer"'
    out = subprocess.run(["bash", "-c", script], env=environ, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [str(tmp_path / "data dir" / n) for n in
                                       ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")] + [str(TRAINERS_DIR)]


def test_trainers_folder_holds_only_trainer_modules():
    """nnU-Net imports every module of the folder under a top-level name during its search: keep it lean."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    for module_file in TRAINERS_DIR.glob("*.py"):
        if module_file.name == "__init__.py":
            continue
        module = importlib.import_module(f"nnunet_ext.trainers.{module_file.stem}")
        trainers = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, nnUNetTrainer)]
        assert trainers, f"{module_file.name} defines no trainer"
