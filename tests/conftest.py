"""Shared test set-up: 4 simulated CPU devices, the data location, the reference venv."""

import os
import pathlib
import subprocess

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
# The one place tests and benchmarks learn where the shared data sets live.
DATA_DIR = pathlib.Path(os.environ.get("INTERDISTILL_DATA_DIR", REPO.parent / "shared" / "data"))
REF_PYTHON = pathlib.Path(os.environ.get("INTERDISTILL_REF_PYTHON", REPO / ".venv-ref" / "bin" / "python"))


def data_path(name: str) -> pathlib.Path:
  """A shared data set's directory, or a skip with the reason when it is absent."""
  path = DATA_DIR / name
  if not path.exists():
    pytest.skip(f"data set {path} not found (set INTERDISTILL_DATA_DIR)")
  return path


def run_reference(script: str, *args: str, timeout: float = 600) -> str:
  """Runs `script` in the PyTorch reference venv (Python 3.11) and returns its stdout."""
  if not REF_PYTHON.exists():
    pytest.skip(f"reference venv {REF_PYTHON} not found (run `make setup`)")
  env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([str(REF_PYTHON), "-c", script, *args], capture_output=True, text=True,
                        timeout=timeout, env=env)
  if proc.returncode != 0:
    raise RuntimeError(f"reference script failed:\n{proc.stderr[-4000:]}")
  return proc.stdout
