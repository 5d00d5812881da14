import json

import pytest
from helpers import write_image_folder

from imageclf.cli import main


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and "imageclf" in out


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["train", "--data", "/no/such/dataset"], "dataset not found"),
        (["train", "--recipe", "nope"], "unknown recipe"),
        (["train", "--set", "nonsense"], "KEY=VALUE"),
        (["train", "--set", "not_a_field=3"], "bad --set"),
        (["train", "--set", "lr_rate=3"], "did you mean 'lr'"),
        # Checked when the config is built: before the (missing) data is looked for.
        (["train", "--data", "/no/such", "--set", "optimizer=adamax"], "unknown optimizer"),
        (["train", "--data", "/no/such", "--set", "loss_reduction=summ"], "loss_reduction"),
        (["info", "/no/such/model.safetensors"], "not found"),
    ],
)
def test_user_errors_are_one_line_exit_2(argv, needle, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_click_usage_errors_exit_2(capsys):
    code, _, err = run(["train", "--epochs", "0"], capsys)
    assert code == 2 and "epochs" in err


def _train(data, out, *extra: str) -> list[str]:
    return ["train", "--recipe", "seed-a", "--data", str(data), "--out", str(out), *extra]


def test_train_and_info(tmp_path, capsys):
    data = write_image_folder(tmp_path / "ds", per_class=10)
    argv = ["-q", *_train(data, tmp_path / "run", "--epochs", "1", "--set", "batch_size=8")]
    code, out, _ = run(argv, capsys)
    assert code == 0 and "test accuracy" in out
    code, out, _ = run(["info", str(tmp_path / "run" / "model.safetensors")], capsys)
    assert code == 0 and "seed-a" in out and "cat, dog, frog" in out
    code, out, _ = run(["info", "--json", str(tmp_path / "run" / "model.safetensors")], capsys)
    assert json.loads(out)["config"]["batch_size"] == 8


def test_json_logs(tmp_path, capsys):
    data = write_image_folder(tmp_path / "ds", per_class=10)
    argv = ["--log-format", "json", *_train(data, tmp_path / "run", "--epochs", "2")]
    code, out, _ = run(argv, capsys)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    epochs = [r["message"].split()[1] for r in records if r["message"].startswith("epoch")]
    assert epochs == ["1/2", "2/2"]


def test_data_info(tmp_path, capsys):
    data = write_image_folder(tmp_path / "ds", per_class=4)
    code, out, _ = run(["-q", "data", "info", str(data)], capsys)
    assert code == 0 and "frog" in out and "images: 18" in out
