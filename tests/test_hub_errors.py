"""Gated, missing and unreachable Hub models and datasets give one message naming the way
forward (licence, login/HF_TOKEN, or the local setting), not a library traceback.

Hub errors come from huggingface_hub's own client talking to a local fake hub (gated and
missing repositories answer with the Hub's status codes and X-Error-Code headers), or from
the libraries' offline mode; transformers and datasets wrap them as they do for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
from huggingface_hub.utils import hf_raise_for_status

from alphaadam.hub import HubAccessError, classify, hub_access, looks_local
from alphaadam.tasks.glue import GlueTask, load_glue_split
from alphaadam.tasks.gsm8k import GSM8KTask, load_gsm8k_split
from fake_hub import FakeHub
from trainer_helpers import subprocess_env

REPO = Path(__file__).resolve().parents[1]
LLAMA = "meta-llama/Llama-2-7b-hf"


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """Empty Hugging Face caches, no token, online."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    return tmp_path


def _offline(monkeypatch) -> None:
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def _hub_error(status: int, code: str | None = None, url: str = "https://huggingface.co/x"):
    """The exception huggingface_hub raises for this response."""
    headers = {"X-Error-Code": code} if code else {}
    response = httpx2.Response(status, headers=headers, request=httpx2.Request("GET", url))
    with pytest.raises(Exception) as err:
        hf_raise_for_status(response)
    return err.value


@pytest.mark.parametrize(
    ("status", "code", "problem"),
    [
        (403, "GatedRepo", "gated"),
        (401, "GatedRepo", "gated"),
        (404, "RepoNotFound", "missing"),
        (404, "RevisionNotFound", "revision"),
        (401, None, "token"),
        (503, None, "server"),
    ],
)
def test_hub_http_errors_are_classified(status, code, problem):
    err = _hub_error(status, code)
    assert classify(err) == problem
    wrapped = OSError("transformers' wrapper")  # transformers raises OSError(...) from err
    wrapped.__cause__ = err
    assert classify(wrapped) == problem


def test_errors_that_are_not_about_the_hub_pass_through(tmp_path):
    assert classify(ValueError("bad label")) is None
    with pytest.raises(KeyError), hub_access("Model", "roberta-base", "hint"):
        raise KeyError("not a hub problem")
    # A folder that exists never reaches the Hub: its own errors are left alone.
    with pytest.raises(OSError, match="no config"), hub_access("Model", str(tmp_path), "hint"):
        err = OSError("no config")
        err.__cause__ = _hub_error(404, "RepoNotFound")
        raise err


def test_a_path_that_does_not_exist_is_named_as_a_path(tmp_path):
    assert looks_local("/data/roberta") and looks_local("./m") and looks_local("a/b/c")
    assert not looks_local("roberta-base") and not looks_local(LLAMA)
    missing = tmp_path / "roberta"
    with pytest.raises(FileNotFoundError, match=f"Model {missing}: no such local"):
        with hub_access("Model", str(missing), "hint"):
            pass


def test_gated_llama_without_access_says_licence_login_or_local_dir(hub_env, monkeypatch):
    with FakeHub() as hub:
        hub.gate("model", LLAMA)
        hub.serve(monkeypatch)
        task = GSM8KTask(data={"path": str(hub_env / "unused")}, model={"name_or_path": LLAMA})
        with pytest.raises(HubAccessError) as err:
            task.build_model()
    message = str(err.value)
    assert err.value.problem == "gated"
    assert f"Model '{LLAMA}' is gated" in message
    assert f"https://huggingface.co/{LLAMA}" in message  # where to accept the licence
    assert "No Hub token is set on this machine" in message
    assert "`hf auth login`" in message and "HF_TOKEN=" in message
    assert "model.name_or_path=<local dir>" in message
    assert "Cannot access gated repo" in message  # the Hub's own words, one line
    assert "Traceback" not in message and len(message.splitlines()) <= 6


def test_gated_with_a_token_says_the_token_lacks_access(hub_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    with FakeHub() as hub:
        hub.gate("model", LLAMA)
        hub.serve(monkeypatch)
        with pytest.raises(HubAccessError, match=r"token on this machine \(HF_TOKEN\) does not"):
            GSM8KTask(data={}, model={"name_or_path": LLAMA}).build_model()


def test_roberta_offline_and_missing_name_the_local_model_setting(hub_env, monkeypatch):
    _offline(monkeypatch)
    task = GlueTask(data={"task": "rte", "glue_dir": str(hub_env)}, model={})
    with pytest.raises(HubAccessError) as err:
        task.setup()  # the tokenizer is the first thing it loads
    assert err.value.problem == "unreachable"
    assert "Tokenizer 'roberta-base' is not in the local Hugging Face cache" in str(err.value)
    assert "HF_HUB_OFFLINE=1 is set" in str(err.value)
    assert "model.name_or_path=<local dir>" in str(err.value)
    with pytest.raises(HubAccessError, match="Model 'roberta-base' is not in the local"):
        task.build_model()

    monkeypatch.undo()
    with FakeHub() as hub:  # serves nothing: every repository is unknown
        hub.serve(monkeypatch)
        with pytest.raises(HubAccessError) as err:
            GlueTask(data={"task": "rte"}, model={"name_or_path": "robreta-base"}).build_model()
    assert err.value.problem == "missing"
    assert "'robreta-base' was not found" in str(err.value)
    assert "model.name_or_path=<local dir>" in str(err.value)


def test_hub_datasets_offline_or_gated_name_the_local_data_settings(hub_env, monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(HubAccessError) as err:
        load_glue_split(GlueTask(data={"task": "mrpc"}).spec, "train", None, "nyu-mll/glue")
    assert err.value.problem == "unreachable"
    assert "GLUE dataset 'nyu-mll/glue'" in str(err.value)
    assert "data.glue_dir=<dir>" in str(err.value)
    with pytest.raises(HubAccessError) as err:
        load_gsm8k_split("train", None, "openai/gsm8k")
    assert "GSM8K dataset 'openai/gsm8k'" in str(err.value)
    assert "data.path=<dir> holding train.jsonl and test.jsonl" in str(err.value)

    monkeypatch.undo()
    import datasets

    with FakeHub() as hub:
        hub.gate("dataset", "openai/gsm8k")
        hub.serve(monkeypatch)
        monkeypatch.setattr(datasets.config, "HF_ENDPOINT", hub.url)
        with pytest.raises(HubAccessError) as err:
            load_gsm8k_split("train", None, "openai/gsm8k")
    assert err.value.problem == "gated"
    assert "https://huggingface.co/datasets/openai/gsm8k" in str(err.value)
    assert "data.path=<dir>" in str(err.value)


def test_train_py_with_gated_llama_prints_the_message_and_exits_1(tmp_path):
    """The user's command, end to end: no traceback, status 1, no run directory."""
    from _finetune_fixtures import write_gsm8k_dir

    data = write_gsm8k_dir(tmp_path / "gsm8k")
    with FakeHub() as hub:
        hub.gate("model", LLAMA)
        env = {
            **subprocess_env(),
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_OFFLINE": "0",
        }
        env.pop("HF_TOKEN", None)
        out = subprocess.run(
            [
                sys.executable,
                str(REPO / "train.py"),
                "experiment=llama2_gsm8k",
                f"data.path={data}",
                "trainer.device=cpu",
                "trainer.mixed_precision=no",
                f"trainer.output_root={tmp_path / 'runs'}",
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )
    assert out.returncode == 1, out.stderr[-3000:]
    assert f"error: Tokenizer '{LLAMA}' is gated" in out.stderr
    assert "hf auth login" in out.stderr and "model.name_or_path=<local dir>" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()
