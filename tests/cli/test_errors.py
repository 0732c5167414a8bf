"""What a user types wrong is named: missing local folders, hub ids offline, devices, bad inputs to the API."""

from __future__ import annotations

import pytest
import torch

from guard_reward.cli.main import error_message, main
from guard_reward.guards.common import HubUnreachableError, checkpoint_source, resolve_device


@pytest.mark.parametrize(
    "path",
    ["./ckpt/does_not_exist", "../nope", "/no/such/ckpt", "~/no_such_ckpt_here", "a/b/c", "models/"],
)
def test_local_looking_paths_that_do_not_exist_say_no_such_folder(path):
    with pytest.raises(FileNotFoundError, match=f"no such folder: {path}"):
        checkpoint_source(path)


def test_a_path_whose_parent_exists_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    with pytest.raises(FileNotFoundError, match="no such folder: ckpt/does_not_exist"):
        checkpoint_source("ckpt/does_not_exist")
    assert checkpoint_source("ckpt") == "local"
    assert checkpoint_source("Qwen/Qwen3Guard-Gen-0.6B") == "hub"
    with pytest.raises(ValueError, match="well-formed hub id"):
        checkpoint_source("Qwen/bad id!")


def test_guards_say_no_such_folder_and_name_the_id_offline():
    from guard_reward import GenGuard, StreamGuard

    for cls in (GenGuard, StreamGuard):
        with pytest.raises(FileNotFoundError, match=r"no such folder: \./ckpt/does_not_exist"):
            cls.from_pretrained("./ckpt/does_not_exist")
    # the suite runs offline (HF_HUB_OFFLINE=1): a hub id names itself and says the hub is unreachable
    for cls, name in ((GenGuard, "Qwen/Qwen3Guard-Gen-0.6B"), (StreamGuard, "Qwen/Qwen3Guard-Stream-0.6B")):
        with pytest.raises(HubUnreachableError, match=f"'{name}'.*hub is unreachable"):
            cls.from_pretrained(name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_is_named():
    with pytest.raises(ValueError, match="device='cuda' asks for CUDA"):
        resolve_device("cuda")


def test_moderate_none_names_the_argument(tiny_gen_path):
    from guard_reward import GenGuard

    gen = GenGuard.from_pretrained(tiny_gen_path)
    with pytest.raises(TypeError, match=r"moderate\(conversations\): expected a list .* got NoneType"):
        gen.moderate(None)


def test_cli_device_error_is_one_line(tiny_gen_path, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    args = [
        "moderate",
        str(tmp_path / "in.jsonl"),
        "-o",
        str(tmp_path / "o.jsonl"),
        "--guard",
        str(tiny_gen_path),
    ]
    assert main([*args, "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: device='cuda' asks for CUDA") and err.count("\n") == 1
    assert not (tmp_path / "o.jsonl").exists()


def test_guard_mode_is_named_on_the_train_command_line(capsys):
    assert main(["train", "--config", "grpo_gen_safety", "--guard_mode", "binary", "--use_cpu", "true"]) == 1
    assert "error: guard_mode='binary' is not accepted; use one of hard, soft" in capsys.readouterr().err


def test_error_message_is_one_line():
    assert error_message(KeyError("line")) == "line"
    assert error_message(ValueError("a\n  b")) == "a b"
    assert error_message(AssertionError()) == "AssertionError"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_a_gpu_recipe_on_a_cpu_says_what_to_do(capsys):
    assert main(["train", "--config", "grpo_gen_safety"]) == 1
    err = capsys.readouterr().err
    assert "trains in bf16 on a GPU" in err and "--smoke" in err and err.count("\n") == 1
