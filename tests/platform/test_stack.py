"""Version guard and device check: wrong stacks and impossible devices fail with one clear line."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch

from refine import stack
from refine.stack import StackError, check_device, check_stack


def _fake_versions(monkeypatch, **overrides):
    """Make `importlib.metadata.version` report `overrides` (None = not installed), the real version otherwise."""
    real_version = importlib.metadata.version

    def version(distribution):
        if distribution in overrides:
            if overrides[distribution] is None:
                raise importlib.metadata.PackageNotFoundError(distribution)
            return overrides[distribution]
        return real_version(distribution)

    monkeypatch.setattr(importlib.metadata, "version", version)


def _assert_one_line(error: BaseException, *fragments: str) -> None:
    message = str(error)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from: {message}"


def test_installed_stack_passes():
    found = check_stack()
    assert found["verl"] == "0.9.1"
    assert found["transformers"] == "5.10.4"
    assert found["torch"].startswith("2.13.")


@pytest.mark.parametrize(
    ("distribution", "fake", "needed", "pip"),
    [
        ("verl", "0.9.2", "verl==0.9.1", "pip install 'verl[verl-core]==0.9.1'"),
        ("flash-linear-attention", "0.5.2", "flash-linear-attention==0.6.0", "flash-linear-attention==0.6.0"),
        ("fla-core", "0.7.0", "fla-core==0.6.0", "pip install 'fla-core==0.6.0'"),
        ("transformers", "5.11.0", "transformers==5.10.4", "pip install 'transformers==5.10.4'"),
        ("torch", "2.15.0", "torch 2.13.x", "pip install 'torch==2.13.0'"),
    ],
)
def test_wrong_version_is_one_line_naming_found_needed_and_fix(monkeypatch, distribution, fake, needed, pip):
    _fake_versions(monkeypatch, **{distribution: fake})
    with pytest.raises(StackError) as caught:
        check_stack()
    _assert_one_line(caught.value, f"{distribution} {fake}", needed, pip)
    assert isinstance(caught.value, RuntimeError)


def test_missing_package_says_not_installed(monkeypatch):
    _fake_versions(monkeypatch, transformers=None)
    with pytest.raises(StackError) as caught:
        check_stack()
    _assert_one_line(caught.value, "transformers is not installed", "pip install 'transformers==5.10.4'")


def test_cpu_local_build_tag_is_accepted(monkeypatch):
    _fake_versions(monkeypatch, torch="2.13.1+cu130")
    assert check_stack()["torch"] == "2.13.1+cu130"


def test_missing_triton_is_one_line(monkeypatch):
    real_import = stack.importlib.import_module

    def import_module(name, *args, **kwargs):
        if name == "triton":
            raise ModuleNotFoundError("No module named 'triton'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(stack.importlib, "import_module", import_module)
    with pytest.raises(StackError) as caught:
        check_stack()
    _assert_one_line(caught.value, "triton cannot be imported", "No module named 'triton'", "pip install triton")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_platform_refuses_other_verl_version(monkeypatch):
    from refine.platform import check_verl_version

    check_verl_version()  # the installed one is fine
    _fake_versions(monkeypatch, verl="0.10.0")
    with pytest.raises(StackError) as caught:
        check_verl_version()
    _assert_one_line(caught.value, "verl 0.10.0", "0.9.1", "pip install 'verl[verl-core]==0.9.1'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("requested", ["cuda", "cuda:0"])
def test_cuda_requested_on_cpu_machine(requested):
    with pytest.raises(StackError) as caught:
        check_device(requested)
    _assert_one_line(caught.value, f"trainer.device={requested}", "trainer.device=cpu", "CUDA build of torch")
    if torch.version.cuda is None:
        assert "CPU-only build" in str(caught.value)


def test_cuda_requested_with_cuda_torch_but_no_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(StackError) as caught:
        check_device("cuda", key="device")
    _assert_one_line(caught.value, "device=cuda", "sees no CUDA device", "set device=cpu")


def test_cpu_is_always_allowed_and_cuda_allowed_when_present(monkeypatch):
    assert check_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert check_device("cuda:1") == "cuda"
    assert check_device("AUTO") == "cuda"


@pytest.mark.parametrize("bad", ["gpu", "", None, "npu"])
def test_unknown_device_is_value_error_naming_key(bad):
    with pytest.raises(ValueError, match="trainer.device="):
        check_device(bad)
