"""Allocator tuning: only for the CPU fast paths, idempotent, no-op where glibc is absent."""

import subprocess
import sys

import pytest

from dataseg.modeling.fast_paths import malloc


def _run(code, env):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True)
    return out.stdout.strip().splitlines()[-1]


# Load the module from its file: importing the dataseg package (torch, detectron2) in every
# subprocess would dominate the test's time.
CODE = (
    "import importlib.util as u; "
    f"s = u.spec_from_file_location('m', {malloc.__file__!r}); m = u.module_from_spec(s); "
    "s.loader.exec_module(m); tune_malloc = m.tune_malloc; print(tune_malloc())"
)


@pytest.mark.skipif(malloc._glibc() is None, reason="glibc only")
def test_tune_malloc_applies_on_glibc_and_is_idempotent():
    assert _run(CODE + "; print(tune_malloc())", {"PATH": ""}) == "True"


def test_plain_computations_or_another_device_leave_the_allocator_alone():
    code = CODE.rsplit("; print", 1)[0]
    assert _run(code + "; print(tune_malloc('off', 'cpu'))", {"PATH": ""}) == "False"
    assert _run(code + "; print(tune_malloc('auto', 'cuda:0'))", {"PATH": ""}) == "False"


def test_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(malloc, "_glibc", lambda: None)
    assert malloc.tune_malloc(force=True) is False
    monkeypatch.setattr(malloc, "_tuned", None)
