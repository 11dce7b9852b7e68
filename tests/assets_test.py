"""Where a data set comes from when `data.dir` is not there: the public zip, fetched once."""

import functools
import http.server
import os
import threading
import zipfile

import pytest

from interdistill_jax import assets, defaults


def _tiny_zip(root):
  """A BEIR-layout zip with its files under `tiny/`, as the BEIR zips are laid out."""
  path = root / "tiny.zip"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("tiny/corpus.jsonl", '{"_id": "d1", "title": "", "text": "alpha"}\n')
    z.writestr("tiny/queries.jsonl", '{"_id": "q1", "text": "alpha?"}\n')
    z.writestr("tiny/qrels/test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
  return path


@pytest.fixture
def server(tmp_path):
  served = tmp_path / "served"
  served.mkdir()
  _tiny_zip(served)
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{httpd.server_address[1]}"
  httpd.shutdown()
  httpd.server_close()


def test_a_missing_data_dir_is_fetched_once_into_the_cache(tmp_path, server):
  config = defaults.data_config()
  config.dir = str(tmp_path / "not-here")
  config.cache_dir = str(tmp_path / "cache")
  config.download_url = f"{server}/tiny.zip"
  root = assets.ensure_dataset(config)
  assert root == os.path.join(config.cache_dir, "tiny")
  dataset = assets.load_dataset(config)
  assert list(dataset.corpus) == ["d1"] and dataset.has_qrels("test")
  os.remove(tmp_path / "served" / "tiny.zip")  # the cached copy is used: no second download
  assert assets.ensure_dataset(config) == root


def test_an_unreachable_download_says_what_to_pass(tmp_path, server):
  config = defaults.data_config()
  config.dir = str(tmp_path / "not-here")
  config.cache_dir = str(tmp_path / "cache")
  config.download_url = f"{server}/missing.zip"
  with pytest.raises(FileNotFoundError, match="could not be downloaded.*--config.data.dir="):
    assets.ensure_dataset(config)
  assert not os.listdir(os.path.join(config.cache_dir))  # no partial archive left behind
