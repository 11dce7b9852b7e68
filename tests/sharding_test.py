"""The mesh of `config.mesh`, built once per task; parameter placement by `mesh.param_rules`."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from interdistill_jax import defaults, hf_weights, retrieval, sharding, train
from tests import fixtures


def _mesh_config(**fields):
  config = defaults.mesh_config()
  config.update(fields)
  return config


def test_mesh_from_config_spans_every_device_by_default():
  assert jax.device_count() == 4, "tests run on 4 simulated CPU devices (see conftest.py)"
  mesh = sharding.mesh_from_config(defaults.base_config().mesh)
  assert mesh.axis_names == (sharding.DATA_AXIS,) and mesh.shape[sharding.DATA_AXIS] == 4
  assert list(mesh.devices.flat) == jax.devices()
  assert mesh == sharding.make_mesh()  # the default builder's mesh


def test_mesh_data_of_fewer_devices_is_honoured_on_one_process():
  mesh = sharding.mesh_from_config(_mesh_config(data=2))
  assert list(mesh.devices.flat) == jax.devices()[:2]
  assert sharding.local_mesh(mesh) == mesh  # one process: every device is local


@pytest.mark.parametrize("data", [0, -2, 5])
def test_mesh_data_beyond_the_devices_is_an_error(data):
  with pytest.raises(ValueError, match=f"mesh.data={data}: there are 4 devices"):
    sharding.mesh_from_config(_mesh_config(data=data))


@pytest.mark.parametrize("rules, match", [
    ((("kernel", "zero3"),), "layout 'zero3'"),
    ((("kernel", ("model", None)),), "names axis 'model'"),
    (("kernel",), "not a \\(regex, layout\\) pair"),
])
def test_malformed_param_rules_fail_when_the_mesh_is_built(rules, match):
  with pytest.raises(ValueError, match=match):
    sharding.mesh_from_config(_mesh_config(param_rules=rules))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
  return fixtures.tiny_bert(tmp_path_factory.mktemp("bert"), layers=1, hidden=16, heads=2)


def _params(bert):
  config = defaults.model_config()
  config.init = str(bert)
  model, _ = hf_weights.load_cross_encoder(config)
  return nnx.split(model, nnx.Param, ...)[1]


def _specs(shardings):
  return {sharding.param_path(path): s.spec
          for path, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}


def test_parameters_are_replicated_by_default(bert):
  specs = _specs(sharding.param_shardings(_params(bert), sharding.make_mesh()))
  assert "bert/layers/0/ffn_in/kernel" in specs and set(specs.values()) == {P()}


def test_fsdp_rule_splits_each_parameter_along_its_largest_even_dimension(bert):
  params = _params(bert)
  mesh = sharding.make_mesh()
  specs = _specs(sharding.param_shardings(params, mesh, ((".*", "fsdp"),)))
  assert specs["bert/layers/0/ffn_in/kernel"] == P(None, "data")  # [16, 64]: 64 is the largest
  assert specs["bert/layers/0/ffn_out/kernel"] == P("data", None)  # [64, 16]
  # [30522, 16]: 30522 does not split over 4 devices, 16 does.
  assert specs["bert/word_emb/embedding"] == P(None, "data")
  # The first matching rule wins; an explicit spec is taken as given.
  rules = (("ffn_in/kernel", (None, "data")), ("_emb/", "replicate"), (".*", "fsdp"))
  specs = _specs(sharding.param_shardings(params, mesh, rules))
  assert specs["bert/layers/0/ffn_in/kernel"] == P(None, "data")
  assert specs["bert/word_emb/embedding"] == P()
  placed = sharding.put_params(params, mesh, rules)
  kernel = placed["bert"]["layers"][0]["ffn_in"]["kernel"][...]
  assert kernel.sharding.spec == P(None, "data") and kernel.addressable_shards[0].data.shape == (16, 16)
  with pytest.raises(ValueError, match="cannot be split by \\('data',\\)"):
    sharding.param_shardings(params, mesh, (("word_emb", ("data",)),))


def test_optimizer_moments_are_placed_like_their_parameters(bert):
  params = _params(bert)
  mesh = sharding.make_mesh()
  tx, _ = train.make_optimizer(defaults.ranker_config().optim, total_steps=10)
  shardings = train.state_shardings(params, tx, mesh, ((".*", "fsdp"),))
  param_specs = _specs(shardings.params)
  adam = [s for s in jax.tree.leaves(shardings.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)]
  assert len(adam) == 1
  assert _specs(adam[0].mu) == _specs(adam[0].nu) == param_specs
  assert adam[0].count.spec == P() and shardings.step.spec == P()
  state = jax.jit(tx.init, out_shardings=shardings.opt_state)(jax.device_put(params, shardings.params))
  assert [x.sharding for x in jax.tree.leaves(state)] == jax.tree.leaves(shardings.opt_state)


def test_a_task_builds_its_mesh_once_from_the_config(bert, tmp_path, monkeypatch):
  """`retrieve` with mesh.data=2: one mesh, of the first 2 devices, for every encoding and search."""
  data_dir = fixtures.tiny_beir(tmp_path / "data", num_docs=20, num_train=4, num_test=4)
  config = fixtures.small_config(bert, data_dir)
  config.mesh.data = 2
  config.retrieve.k = 5
  built = []
  make_mesh = sharding.make_mesh

  def counting_make_mesh(*args, **kwargs):
    built.append(make_mesh(*args, **kwargs))
    return built[-1]

  monkeypatch.setattr(sharding, "make_mesh", counting_make_mesh)
  used = []
  encoder_init = retrieval.Encoder.__init__

  def recording_init(self, *args, **kwargs):
    used.append(kwargs["mesh"])
    encoder_init(self, *args, **kwargs)

  monkeypatch.setattr(retrieval.Encoder, "__init__", recording_init)
  retrieval.run(config, str(tmp_path / "work"))
  assert len(built) == 1 and list(built[0].devices.flat) == jax.devices()[:2]
  assert used == built
  run = (tmp_path / "work" / "candidates" / "test.trec").read_text().splitlines()
  assert len(run) == 4 * 5 and np.isfinite([float(line.split()[4]) for line in run]).all()
