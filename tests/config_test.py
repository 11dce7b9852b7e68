"""Configs are locked: configs/*.py and `--config.a.b=v` set declared fields, and a typo is an error."""

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from interdistill_jax import defaults, tasks
from tests.conftest import REPO

# config_flags loads config files with the deprecated load_module().
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

CONFIGS = sorted((REPO / "configs").glob("*.py"))
# The string arguments (`--config=configs/NAME.py:ARG`) that configs take, besides none.
CONFIG_ARGS = {"beir": ["/data/beir/nfcorpus"], "nq": ["tfds", "dpr"], "tqa": ["tfds", "dpr"]}


def _parse(*argv):
  """The config that `python -m interdistill_jax.main ARGV` runs with (its flag: lock_config=True)."""
  argv = ["main", *argv]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def _fields(config, prefix=""):
  """Every field's dotted path, sections included."""
  out = set()
  for key, value in config.items():
    out.add(prefix + key)
    if isinstance(value, ml_collections.ConfigDict):
      out |= _fields(value, f"{prefix}{key}.")
  return out


def test_every_config_file_loads_locked_with_the_default_fields():
  assert {path.stem for path in CONFIGS} >= {"beir", "demo", "nq", "scifact", "tqa"}
  assert set(CONFIG_ARGS) <= {path.stem for path in CONFIGS}
  declared = _fields(defaults.base_config())
  for path in CONFIGS:
    for arg in [None, *CONFIG_ARGS.get(path.stem, [])]:
      config = _parse(f"--config={path}" + (f":{arg}" if arg else ""))
      assert config.is_locked and config.ranker.optim.is_locked, (path, arg)
      assert _fields(config) == declared, (path, arg)  # nothing added, nothing lost
      tasks.resolve(config.task)
  assert _parse(f"--config={REPO / 'configs' / 'beir.py'}:/data/x").data.dir == "/data/x"
  assert _parse(f"--config={REPO / 'configs' / 'nq.py'}:dpr").data.qa.format == "dpr"


def test_command_line_overrides_set_declared_fields():
  config = _parse(f"--config={REPO / 'configs' / 'demo.py'}", "--config.ranker.epochs=3",
                  "--config.encode.buckets=(16,32)", "--config.teacher.backend=openai",
                  "--config.data.qa.num_train=5")
  assert config.ranker.epochs == 3.0 and config.encode.buckets == (16, 32)
  assert config.teacher.backend == "openai" and config.data.qa.num_train == 5
  assert config.ranker.list_size == 10  # the file's own value, kept


def test_the_teacher_and_the_reader_declare_the_llm_client_fields_once():
  client = defaults.client_config()
  teacher, reader = defaults.teacher_config(), defaults.reader_config()
  assert set(client) == set(teacher) & set(reader) and len(client) == 17
  assert all(teacher[k] == v for k, v in client.items())
  assert {k: reader[k] for k in client if reader[k] != client[k]} == {
      "backend": "llamacpp", "max_output_tokens": 32, "max_passage_tokens": 200}
  with pytest.raises(KeyError, match="max_output_token"):
    defaults.client_config(max_output_token=16)


def test_a_misspelt_field_is_an_error_that_names_it(tmp_path):
  config = defaults.base_config()
  with pytest.raises(AttributeError, match='"hidden_dropout_prob" does not exist'):
    config.ranker.model.hidden_dropout_prob = 0.0
  with pytest.raises(AttributeError, match='"sed" does not exist'):
    config.sed = 1
  with pytest.raises(KeyError, match='"bakend" does not exist'):
    config.teacher.update(dict(model="m", bakend="openai"))
  with pytest.raises(AttributeError, match='"sim_nosie" does not exist'):
    defaults.teacher_config().sim_nosie = 0.5  # a section on its own is locked too
  assert "hidden_dropout_prob" not in config.ranker.model and "sed" not in config
  # In a config file...
  path = tmp_path / "typo.py"
  path.write_text("from interdistill_jax import defaults\n\n\n"
                  "def get_config(arg=None):\n"
                  "  config = defaults.base_config()\n"
                  "  config.ranker.epoch = 3.0\n"
                  "  return config\n")
  with pytest.raises(AttributeError, match='"epoch" does not exist'):
    _parse(f"--config={path}")
  # ...and on the command line.
  with pytest.raises(AttributeError, match='instead of "epoch"'):
    _parse(f"--config={REPO / 'configs' / 'demo.py'}", "--config.ranker.epoch=3")
