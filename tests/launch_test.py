"""launch/*.sh: shellcheck, argument checks, --dry_run command lines, and runs against local stand-ins.

Nothing here touches the network: the cloud scripts run either with --dry_run or with `gcloud` and `git`
replaced on PATH by stand-ins that act on a local directory playing the VM's home.
"""

import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from absl import app

from interdistill_jax import main as main_lib
from tests.conftest import REPO

LAUNCH = REPO / "launch"
SCRIPTS = ["local.sh", "gpu_vm.sh", "tpu_vm.sh", "cloud_common.sh"]
# An argument that must reach main.py unchanged through two shells (local, then the VM's).
TRICKY = "--config.teacher.prompt=it's \"quoted\" $HOME `x` a  b;c"
JAX_VERSION = next(line.split("==")[1].strip()
                   for line in (REPO / "requirements.txt").read_text().splitlines()
                   if line.startswith("jax=="))


def _run(script, *args, env=None, timeout=60, **kwargs):
  return subprocess.run([str(LAUNCH / script), *args], capture_output=True, text=True,
                        timeout=timeout, env=env, **kwargs)


def _commands(stdout: str) -> list[list[str]]:
  """The "+ " lines of a --dry_run, each split as a POSIX shell would."""
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def _remote(cmd: list[str]) -> str:
  return cmd[cmd.index("--command") + 1]


def _main_args(remote_cmd: str) -> list[str]:
  words = shlex.split(remote_cmd)
  i = words.index("interdistill_jax.main")
  assert words[i - 1] == "-m"
  return words[i + 1:]


def _no_cloud_env(tmp_path) -> dict:
  """An environment whose `gcloud` and `git` fail loudly, to prove --dry_run runs neither."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  for tool in ("gcloud", "git"):
    stub = bin_dir / tool
    stub.write_text(f"#!/bin/sh\ntouch {tmp_path}/{tool}.called\nexit 99\n")
    stub.chmod(0o755)
  return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


# --- shellcheck ------------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck not installed (apt-get install shellcheck)")
@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck(script):
  proc = subprocess.run(["shellcheck", str(LAUNCH / script)], capture_output=True, text=True,
                        cwd=REPO, timeout=60)
  assert proc.returncode == 0, proc.stdout + proc.stderr


# --- main.py: the distributed environment ------------------------------------------------------------

def test_distributed_kwargs():
  assert main_lib.distributed_kwargs({}) == {}
  env = {"INTERDISTILL_COORDINATOR": "127.0.0.1:1234", "INTERDISTILL_NUM_PROCESSES": "2",
         "INTERDISTILL_PROCESS_ID": "1"}
  assert main_lib.distributed_kwargs(env) == {
      "coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 1}
  with pytest.raises(app.UsageError, match="INTERDISTILL_PROCESS_ID"):
    main_lib.distributed_kwargs({"INTERDISTILL_COORDINATOR": "127.0.0.1:1234"})


# --- local.sh: arguments ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--num_processes", "0", "--", "--config=c.py"], "--num_processes must be a positive integer"),
    (["--num_processes", "-2", "--", "--config=c.py"], "--num_processes must be a positive integer"),
    (["--num_processes=two", "--", "--config=c.py"], "--num_processes must be a positive integer"),
    (["--devices_per_process", "0", "--", "--config=c.py"], "--devices_per_process must be"),
    (["--port", "70000", "--", "--config=c.py"], "--port must be"),
    (["--num_processes", "2", "--config=c.py"], "unknown option '--config=c.py'"),
    (["--num_processes", "2"], "missing -- before the main.py arguments"),
    (["--num_processes", "2", "--"], "no main.py arguments after --"),
    (["--num_processes"], "--num_processes needs a value"),
])
def test_local_rejects_bad_arguments(args, message):
  proc = _run("local.sh", "--dry_run", *args)
  assert proc.returncode == 2
  assert message in proc.stderr
  assert proc.stdout == ""


def test_local_help():
  proc = _run("local.sh", "--help")
  assert proc.returncode == 0
  assert "--num_processes" in proc.stdout and "LOG_DIR" in proc.stdout


def test_local_dry_run_one_process():
  env = dict(os.environ, PYTHON="/opt/py/bin/python", XLA_FLAGS="--xla_foo=1")
  proc = _run("local.sh", "--dry_run", "--", "--config=configs/demo.py", TRICKY, env=env)
  assert proc.returncode == 0, proc.stderr
  (cmd,) = _commands(proc.stdout)
  # XLA_FLAGS untouched without --devices_per_process; no distributed set-up for one process.
  assert cmd == ["env", "/opt/py/bin/python", "-m", "interdistill_jax.main",
                 "--config=configs/demo.py", TRICKY]


def test_local_dry_run_processes():
  env = dict(os.environ, PYTHON="/opt/py/bin/python", LOG_DIR="/var/tmp/x",
             XLA_FLAGS="--xla_foo=1 --xla_force_host_platform_device_count=4")
  proc = _run("local.sh", "--num_processes", "3", "--devices_per_process=2", "--port", "23456",
              "--dry_run", "--", "--config=configs/demo.py", TRICKY, env=env)
  assert proc.returncode == 0, proc.stderr
  cmds = _commands(proc.stdout)
  assert len(cmds) == 3
  for i, cmd in enumerate(cmds):
    assert cmd[0] == "env"
    assigned = dict(word.split("=", 1) for word in cmd[1:5])
    assert assigned == {
        "INTERDISTILL_COORDINATOR": "127.0.0.1:23456", "INTERDISTILL_NUM_PROCESSES": "3",
        "INTERDISTILL_PROCESS_ID": str(i),
        "XLA_FLAGS": "--xla_foo=1 --xla_force_host_platform_device_count=2"}
    assert cmd[5:] == ["/opt/py/bin/python", "-m", "interdistill_jax.main",
                       "--config=configs/demo.py", TRICKY, "--multihost"]
    assert f"# proc {i} log: /var/tmp/x/interdistill_proc{i}.log" in proc.stdout
  # local.sh sets exactly the variables main.py reads.
  assert [word.split("=")[0] for word in cmds[0][1:4]] == list(main_lib.DISTRIBUTED_ENV)


def test_local_dry_run_keeps_given_multihost_and_picks_a_port():
  proc = _run("local.sh", "--num_processes", "2", "--dry_run", "--", "--config=c.py", "--multihost")
  assert proc.returncode == 0, proc.stderr
  cmds = _commands(proc.stdout)
  assert [cmd.count("--multihost") for cmd in cmds] == [1, 1]
  ports = {word.split(":")[-1] for cmd in cmds for word in cmd
           if word.startswith("INTERDISTILL_COORDINATOR=")}
  assert len(ports) == 1 and 0 < int(ports.pop()) < 65536


# --- local.sh: processes (PYTHON replaced by stand-ins) -----------------------------------------------

def _python_stub(tmp_path, body: str) -> pathlib.Path:
  """A PYTHON for local.sh: `-m interdistill_jax.main ARGS` runs the shell `body`, the rest real Python."""
  stub = tmp_path / "python"
  stub.write_text(f"#!/bin/bash\nif [[ $1 != -m ]]; then exec {sys.executable} \"$@\"; fi\nshift 2\n"
                  + textwrap.dedent(body))
  stub.chmod(0o755)
  return stub


def test_local_failure_stops_the_others(tmp_path):
  # Process 1 fails only once the others have their TERM trap in place, so the test does not
  # depend on how fast a loaded machine starts them.
  stub = _python_stub(tmp_path, f"""\
      echo "start $INTERDISTILL_PROCESS_ID of $INTERDISTILL_NUM_PROCESSES"
      if [[ $INTERDISTILL_PROCESS_ID == 1 ]]; then
        while [[ ! -e {tmp_path}/ready0 || ! -e {tmp_path}/ready2 ]]; do sleep 0.05; done
        echo failing; exit 3
      fi
      trap 'echo stopped; exit 143' TERM
      touch {tmp_path}/ready$INTERDISTILL_PROCESS_ID
      while :; do sleep 0.1; done
      """)
  env = dict(os.environ, PYTHON=str(stub), LOG_DIR=str(tmp_path / "logs"))
  start = time.monotonic()
  proc = _run("local.sh", "--num_processes", "3", "--", "--config=c.py", env=env)
  assert time.monotonic() - start < 60  # the stand-ins loop forever unless stopped
  assert proc.returncode == 3
  assert "process 1 exited with status 3" in proc.stderr
  assert "[proc 1] failing" in proc.stdout
  assert "[proc 0] stopped" in proc.stdout and "[proc 2] stopped" in proc.stdout
  log1 = (tmp_path / "logs" / "interdistill_proc1.log").read_text()
  assert log1 == "start 1 of 3\nfailing\n"


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_local_forwards_signals(tmp_path, sig, status):
  stub = _python_stub(tmp_path, """\
      trap 'echo "stopped $INTERDISTILL_PROCESS_ID"; exit 143' TERM
      echo "ready $INTERDISTILL_PROCESS_ID"
      while :; do sleep 0.1; done
      """)
  env = dict(os.environ, PYTHON=str(stub), LOG_DIR=str(tmp_path))
  # As from a terminal: a shell that starts with SIGINT ignored (e.g. under a background job)
  # cannot trap it, so the launcher starts with the default disposition.
  proc = subprocess.Popen([str(LAUNCH / "local.sh"), "--num_processes", "2", "--", "--config=c.py"],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  deadline = time.monotonic() + 20
  logs = [tmp_path / f"interdistill_proc{i}.log" for i in range(2)]
  while not all(log.exists() and "ready" in log.read_text() for log in logs):
    assert time.monotonic() < deadline, "processes did not start"
    time.sleep(0.05)
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=20)
  assert proc.returncode == status, err
  assert "[proc 0] stopped 0" in out and "[proc 1] stopped 1" in out


@pytest.mark.slow  # two JAX processes
def test_local_two_processes_two_devices_psum(tmp_path):
  """2 processes x 2 simulated CPU devices through local.sh's environment and main.distributed_kwargs."""
  probe = tmp_path / "probe.py"
  probe.write_text(textwrap.dedent("""\
      import json, sys
      import jax, numpy as np
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from interdistill_jax.main import distributed_kwargs
      assert sys.argv[-1] == "--multihost", sys.argv
      jax.distributed.initialize(**distributed_kwargs(), initialization_timeout=60)
      mesh = Mesh(np.array(jax.devices()), ("data",))
      local = np.arange(jax.local_device_count(), dtype=np.float32) + 10 * jax.process_index()
      x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local)
      psum = jax.jit(jax.shard_map(lambda v: jax.lax.psum(v, "data"), mesh=mesh,
                                   in_specs=P("data"), out_specs=P()))(x)
      print("RESULT " + json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                                    "local": jax.local_device_count(), "global": jax.device_count(),
                                    "psum": float(np.asarray(psum.addressable_data(0))[0])}))
      """))
  stub = _python_stub(tmp_path, f'exec {sys.executable} {probe} "$@"\n')
  env = dict(os.environ, PYTHON=str(stub), LOG_DIR=str(tmp_path), JAX_PLATFORMS="cpu")
  proc = _run("local.sh", "--num_processes", "2", "--devices_per_process", "2", "--",
              "--config=c.py", env=env, timeout=180)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  results = sorted((json.loads(line.split("RESULT ", 1)[1]) for line in proc.stdout.splitlines()
                    if "RESULT " in line), key=lambda r: r["process"])
  # Devices hold 0, 1 (process 0) and 10, 11 (process 1).
  assert results == [{"process": i, "processes": 2, "local": 2, "global": 4, "psum": 22.0}
                     for i in range(2)]


# --- gpu_vm.sh / tpu_vm.sh: --dry_run ------------------------------------------------------------------

def _dry_run(tmp_path, script, *args, extra_env=None):
  env = _no_cloud_env(tmp_path)
  env.pop("GEMINI_API_KEY", None)
  env.update(extra_env or {})
  proc = _run(script, "--dry_run", *args, env=env)
  assert not (tmp_path / "gcloud.called").exists() and not (tmp_path / "git.called").exists()
  return proc


@pytest.mark.parametrize("script", ["gpu_vm.sh", "tpu_vm.sh"])
def test_cloud_dry_run_commands(tmp_path, script):
  tpu = script == "tpu_vm.sh"
  proc = _dry_run(tmp_path, script, "--name", "exp-vm", "--zone", "europe-west4-a", "--project",
                  "my-project", "--workdir", "runs/exp1", "--fetch_to", "results", "--delete_after",
                  "--", "--config=configs/scifact.py", "--config.task=evaluate", TRICKY)
  assert proc.returncode == 0, proc.stderr
  cmds = _commands(proc.stdout)
  gcloud = ["gcloud", "compute", "tpus", "tpu-vm"] if tpu else ["gcloud", "compute"]
  ssh = gcloud + ["ssh"]
  scp = gcloud + ["scp"]

  def is_(cmd, prefix):
    return cmd[:len(prefix)] == prefix

  # Every gcloud command names the zone and project.
  for cmd in cmds:
    if cmd[0] == "gcloud":
      assert ["--zone", "europe-west4-a"] == cmd[cmd.index("--zone"):cmd.index("--zone") + 2]
      assert cmd[cmd.index("--project") + 1] == "my-project"

  create, wait, archive, upload, extract, install, run, mkdir, fetch, delete = cmds
  if tpu:
    assert is_(create, gcloud + ["create", "exp-vm"])
    assert create[create.index("--accelerator-type") + 1] == "v5litepod-8"
    assert create[create.index("--version") + 1] == "v2-alpha-tpuv5-lite"
  else:
    assert is_(create, ["gcloud", "compute", "instances", "create", "exp-vm"])
    assert create[create.index("--accelerator") + 1] == "type=nvidia-l4,count=1"
    assert create[create.index("--image-project") + 1] == "deeplearning-platform-release"
    assert "nvidia-580" in create[create.index("--image-family") + 1]
  assert is_(wait, ssh + ["exp-vm"]) and _remote(wait) == "true"
  # Code: an archive of HEAD, copied and unpacked on every worker (keeping the venv and runs).
  assert archive[:4] == ["git", "-C", str(REPO), "archive"] and archive[-1] == "HEAD"
  tarball = archive[archive.index("-o") + 1]
  assert is_(upload, scp) and upload[-2:] == [tarball, "exp-vm:interdistill_jax.tar.gz"]
  assert is_(extract, ssh) and "tar -xzf ../interdistill_jax.tar.gz" in _remote(extract)
  assert "! -name .venv" in _remote(extract)
  # Install: the pinned jax with the accelerator's extra, requirements.txt, the package.
  extra = "tpu" if tpu else "cuda13"
  install_words = shlex.split(_remote(install).replace(";", " ; "))
  assert f"jax[{extra}]=={JAX_VERSION}" in install_words
  assert "requirements.txt" in install_words and "--python" in install_words
  assert ("nvidia-smi" in _remote(install)) != tpu
  # Run: main.py arguments intact, the launcher's workdir appended; --multihost on TPU.
  assert is_(run, ssh + ["exp-vm"])
  expected = ["--config=configs/scifact.py", "--config.task=evaluate", TRICKY]
  expected += ["--multihost"] if tpu else []
  assert _main_args(_remote(run)) == expected + ["--workdir=runs/exp1"]
  assert mkdir == ["mkdir", "-p", "results"]
  assert is_(fetch, scp) and "--recurse" in fetch
  assert fetch[-2:] == ["exp-vm:interdistill_jax/runs/exp1", "results"]
  assert is_(delete, (gcloud + ["delete", "exp-vm"]) if tpu
             else ["gcloud", "compute", "instances", "delete", "exp-vm"])
  assert "--quiet" in delete
  if tpu:  # every worker of a pod slice gets the code, the install and the run; results from 0
    for cmd in (wait, upload, extract, install, run):
      assert "--worker=all" in cmd
    assert "--worker=0" in fetch


def test_cloud_dry_run_quoting_survives_the_remote_shell(tmp_path):
  """The printed remote command, run by a shell, hands main.py exactly the arguments given."""
  proc = _dry_run(tmp_path, "tpu_vm.sh", "--", "--config=configs/scifact.py", TRICKY,
                  "--workdir", "runs/q")
  assert proc.returncode == 0, proc.stderr
  run = _commands(proc.stdout)[6]
  home = tmp_path / "home"
  python = home / "interdistill_jax" / ".venv" / "bin" / "python"
  python.parent.mkdir(parents=True)
  python.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
  python.chmod(0o755)
  out = subprocess.run(["bash", "-c", _remote(run)], cwd=home, capture_output=True, text=True,
                       timeout=30, check=True).stdout
  assert json.loads(out) == ["-m", "interdistill_jax.main", "--config=configs/scifact.py", TRICKY,
                             "--multihost", "--workdir=runs/q"]


def test_cloud_dry_run_env_keys_print_names_only(tmp_path):
  secret = "sk-secret-value 'with quotes'"
  proc = _dry_run(tmp_path, "gpu_vm.sh", "--env_keys", "OPENAI_API_KEY,GEMINI_API_KEY", "--",
                  "--config=c.py", extra_env={"OPENAI_API_KEY": secret})
  assert proc.returncode == 0, proc.stderr
  assert "sk-secret" not in proc.stdout + proc.stderr
  assert "OPENAI_API_KEY=$OPENAI_API_KEY" in proc.stdout
  assert "GEMINI_API_KEY is not set here; not forwarded" in proc.stderr
  cmds = _commands(proc.stdout)
  upload_env = [c for c in cmds if c[-1].endswith(":interdistill_jax/.launch_env")]
  assert len(upload_env) == 1
  run = _remote(cmds[-3])
  assert ". ./.launch_env" in run and "rm -f ./.launch_env" in run


def test_cloud_no_env_file_without_keys(tmp_path):
  proc = _dry_run(tmp_path, "gpu_vm.sh", "--skip_install", "--", "--config=c.py")
  assert proc.returncode == 0, proc.stderr
  assert ".launch_env" not in proc.stdout
  assert not any("uv pip install" in _remote(c) for c in _commands(proc.stdout) if "--command" in c)
  assert not any("delete" in c for c in _commands(proc.stdout))


@pytest.mark.parametrize("script, args, message", [
    ("gpu_vm.sh", ["--", "--config=c.py"], None),
    ("gpu_vm.sh", ["--config=c.py"], "unknown option '--config=c.py'"),
    ("gpu_vm.sh", ["--name", "x"], "missing -- before the main.py arguments"),
    ("gpu_vm.sh", ["--"], "no main.py arguments after --"),
    ("gpu_vm.sh", ["--name", "Bad_Name", "--", "--config=c.py"], "--name must be"),
    ("gpu_vm.sh", ["--gpu_count", "0", "--", "--config=c.py"], "--gpu_count must be"),
    ("gpu_vm.sh", ["--env_keys", "A;rm", "--", "--config=c.py"], "--env_keys must be"),
    ("gpu_vm.sh", ["--zone"], "--zone needs a value"),
    ("gpu_vm.sh", ["--workdir", "a", "--", "--config=c.py", "--workdir=b"], "two different workdirs"),
    ("tpu_vm.sh", ["--accelerator", "v9z-8", "--", "--config=c.py"], "pass --runtime_version"),
    ("tpu_vm.sh", ["--accelerator", "tpu", "--", "--config=c.py"], "--accelerator must look like"),
])
def test_cloud_rejects_bad_arguments(tmp_path, script, args, message):
  proc = _dry_run(tmp_path, script, *args)
  if message is None:
    assert proc.returncode == 0, proc.stderr
  else:
    assert proc.returncode == 2 and message in proc.stderr
    assert proc.stdout == ""


def test_cloud_workdir_from_main_args(tmp_path):
  proc = _dry_run(tmp_path, "gpu_vm.sh", "--", "--config=c.py", "--workdir", "/data/exp")
  assert proc.returncode == 0, proc.stderr
  cmds = _commands(proc.stdout)
  assert _main_args(_remote(cmds[6])) == ["--config=c.py", "--workdir=/data/exp"]
  assert cmds[8][-2:] == ["interdistill-gpu:/data/exp", "runs"]


# --- gpu_vm.sh / tpu_vm.sh: a whole run against stand-ins for gcloud and git -------------------------

_FAKE_GCLOUD = """\
#!{python}
# Stands in for gcloud: records each call; ssh runs the command in FAKE_HOME, scp copies to/from it.
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
home = os.environ["FAKE_HOME"]
with open(os.environ["GCLOUD_LOG"], "a") as f:
  f.write(json.dumps(args) + "\\n")
if "describe" in args:
  sys.exit(1)  # no such VM yet
if "ssh" in args:
  cmd = args[args.index("--command") + 1]
  if "uv pip install" in cmd:
    sys.exit(0)
  sys.exit(subprocess.run(["bash", "-c", cmd], cwd=home, env=dict(os.environ, HOME=home)).returncode)
if "scp" in args:
  src, dst = [a for a in args if not a.startswith("-")][-2:]
  local = lambda p: os.path.join(home, p.split(":", 1)[1]) if ":" in p else p
  src, dst = local(src), local(dst)
  if os.path.isdir(src):
    shutil.copytree(src, os.path.join(dst, os.path.basename(src)), dirs_exist_ok=True)
  else:
    shutil.copy(src, dst)
sys.exit(0)
"""

_FAKE_GIT = """\
#!{python}
# Stands in for git: `archive -o OUT REF` packs a one-file tree; everything else succeeds.
import sys, tarfile, io
args = sys.argv[1:]
if "archive" in args:
  with tarfile.open(args[args.index("-o") + 1], "w:gz") as tar:
    data = b"shipped"
    info = tarfile.TarInfo("README.md"); info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
"""

_FAKE_MAIN = """\
#!{python}
# Stands in for the VM's venv python running main.py: records argv and the forwarded key.
import json, os, sys
workdir = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--workdir=")][-1]
os.makedirs(workdir, exist_ok=True)
with open(os.path.join(workdir, "run.json"), "w") as f:
  json.dump({{"argv": sys.argv[1:], "key": os.environ.get("OPENAI_API_KEY"),
             "env_file_left": os.path.exists(".launch_env")}}, f)
sys.exit(int(os.environ.get("FAKE_MAIN_STATUS", "0")))
"""


@pytest.mark.parametrize("script", ["gpu_vm.sh", "tpu_vm.sh"])
@pytest.mark.parametrize("main_status", [0, 5])
def test_cloud_run_against_stand_ins(tmp_path, script, main_status):
  bin_dir, home, work = tmp_path / "bin", tmp_path / "home", tmp_path / "local"
  for d in (bin_dir, home, work):
    d.mkdir()
  for name, text in (("gcloud", _FAKE_GCLOUD), ("git", _FAKE_GIT)):
    (bin_dir / name).write_text(text.format(python=sys.executable))
    (bin_dir / name).chmod(0o755)
  # The VM already holds an older code tree and a venv.
  code = home / "interdistill_jax"
  (code / ".venv" / "bin").mkdir(parents=True)
  (code / ".venv" / "bin" / "python").write_text(_FAKE_MAIN.format(python=sys.executable))
  (code / ".venv" / "bin" / "python").chmod(0o755)
  (code / "stale.py").write_text("old")
  secret = "sk-live 'x' $y"
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", FAKE_HOME=str(home),
             GCLOUD_LOG=str(tmp_path / "gcloud.jsonl"), OPENAI_API_KEY=secret,
             FAKE_MAIN_STATUS=str(main_status))
  proc = _run(script, "--name", "vm1", "--env_keys", "OPENAI_API_KEY", "--delete_after", "--",
              "--config=configs/scifact.py", TRICKY, env=env, cwd=work)
  assert proc.returncode == main_status, proc.stderr
  calls = [json.loads(line) for line in (tmp_path / "gcloud.jsonl").read_text().splitlines()]
  assert secret not in proc.stdout + proc.stderr + json.dumps(calls)
  assert any("describe" in c for c in calls) and any("create" in c for c in calls)
  assert "delete" in calls[-1]  # also after a failed run
  # The code was replaced (venv kept), the key reached the run and its file is gone.
  assert (code / "README.md").read_text() == "shipped" and not (code / "stale.py").exists()
  result = json.loads((work / "runs" / "vm1" / "run.json").read_text())
  expected = ["-m", "interdistill_jax.main", "--config=configs/scifact.py", TRICKY]
  expected += ["--multihost"] if script == "tpu_vm.sh" else []
  assert result == {"argv": expected + ["--workdir=runs/vm1"], "key": secret, "env_file_left": False}
  assert not (code / ".launch_env").exists()
  # The local temporary directory (archive, key file) is removed.
  tarball = next(line.split(" -o ")[1].split()[0] for line in proc.stderr.splitlines()
                 if line.startswith("+ git ") and " archive " in line)
  assert not pathlib.Path(tarball).parent.exists()
