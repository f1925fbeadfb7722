"""lm-eval registration: no lm_eval import at module import, a clear error without it, and the registered class
passes our defaults to lm-eval's HFLM (checked against stand-in lm_eval modules, since lm-eval is an optional extra)."""

import subprocess
import sys
import types

import pytest

from refine.eval import harness


def test_module_import_does_not_import_lm_eval():
    code = "import sys, refine.eval.harness; assert 'lm_eval' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_register_without_lm_eval_names_the_extra(monkeypatch):
    # None in sys.modules makes the import fail as it does without lm-eval, whether or not it is installed
    monkeypatch.setitem(sys.modules, "lm_eval.api.registry", None)
    monkeypatch.setattr(harness, "_registered", None)
    with pytest.raises(ImportError, match=r"\.\[eval\]"):
        harness.register()


@pytest.fixture
def fake_lm_eval(monkeypatch):
    registry: dict = {}

    class FakeHFLM:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            self.tokenizer = types.SimpleNamespace(pad_token="<unk>", eos_token="</s>")

    def register_model(*names):
        def decorate(cls):
            for name in names:
                registry[name] = cls
            return cls

        return decorate

    modules = {
        "lm_eval": types.ModuleType("lm_eval"),
        "lm_eval.api": types.ModuleType("lm_eval.api"),
        "lm_eval.api.registry": types.SimpleNamespace(register_model=register_model),
        "lm_eval.models": types.ModuleType("lm_eval.models"),
        "lm_eval.models.huggingface": types.SimpleNamespace(HFLM=FakeHFLM),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(harness, "_registered", None)
    return registry


def test_register_adds_the_refine_model(fake_lm_eval):
    cls = harness.register()
    assert fake_lm_eval == {"refine": cls}
    assert harness.register() is cls  # idempotent
    lm = cls(pretrained="/ckpt", dtype="bfloat16")
    assert lm.kwargs == {"pretrained": "/ckpt", "max_length": 16384, "backend": "causal", "dtype": "bfloat16"}
    assert lm.tokenizer.pad_token == "</s>"  # pad = EOS, as in training
    assert "refine.models" in sys.modules  # our Auto-class registrations ran before the checkpoint loads
    assert cls(pretrained="/ckpt", pad_as_eos=False).tokenizer.pad_token == "<unk>"
