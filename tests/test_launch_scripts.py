"""The TPU and GPU launch scripts, checked through their dry runs (``DRY_RUN=1`` prints every
command instead of running it), per TPU generation: one host or a pod slice, chips per host,
runtime, zone, where the runs go, ``--distributed`` only on pods, the Python and JAX that
setup installs; and the GPU launcher's one task per GPU under SLURM / Open MPI. Nothing here
reaches Google Cloud."""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU = ROOT / "experiments" / "tpu"
SCRIPTS = sorted(TPU.glob("*.sh")) + [ROOT / "experiments" / "gpu" / "run.sh"]
# Settings a developer may have exported; each test starts from the scripts' defaults.
SETTINGS = ("TPU_NAME", "ACCELERATOR", "ZONE", "RUNTIME", "BUCKET", "WORKDIR", "SPOT", "MESH",
            "SEEDS", "PYTHON_VERSION", "QUEUED_RESOURCE", "LOCAL_TFDS", "LOCAL_MODELS",
            "NUM_NODES", "NODE_RANK", "COORDINATOR", "GPUS_PER_NODE", "CUDA_VISIBLE_DEVICES")


def dry_run(script: str, *args: str, **env: str) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items()
            if k not in SETTINGS and not k.startswith(("SLURM_", "OMPI_"))}
    result = subprocess.run(["bash", str(ROOT / "experiments" / script), *args],
                            capture_output=True, text=True, check=False, timeout=60,
                            env={**base, "DRY_RUN": "1", **env})
    return result.returncode, result.stdout, result.stderr


def ok(script: str, *args: str, **env: str) -> str:
    status, out, err = dry_run(script, *args, **env)
    assert status == 0, err
    return out


def commands(out: str) -> list[list[str]]:
    """The printed commands, split as the shell would."""
    return [shlex.split(line) for line in out.splitlines() if line.startswith(("gcloud", "git"))]


def remote(out: str) -> list[tuple[str, str]]:
    """(worker, command) of every ``gcloud compute tpus tpu-vm ssh``."""
    found = []
    for argv in commands(out):
        if argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]:
            flags = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
            found.append((flags["worker"], flags["command"]))
    return found


# accelerator: (pod, chips, hosts, chips per host, runtime, zone), from the Cloud TPU docs
# (configurations per generation, TPU software versions, regions and zones).
SLICES = {
    "v4-8": (False, 4, 1, 4, "tpu-ubuntu2204-base", "us-central2-b"),
    "v4-32": (True, 16, 4, 4, "tpu-ubuntu2204-base", "us-central2-b"),
    "v5litepod-8": (False, 8, 1, 8, "v2-alpha-tpuv5-lite", "us-west4-a"),
    "v5litepod-16": (True, 16, 4, 4, "v2-alpha-tpuv5-lite", "us-west4-a"),
    "v5p-8": (False, 4, 1, 4, "v2-alpha-tpuv5", "us-east5-a"),
    "v6e-8": (False, 8, 1, 8, "v2-alpha-tpuv6e", "us-east5-b"),
}


def info(**env: str) -> dict[str, str]:
    out = ok("tpu/info.sh", **env)
    return dict(line.split("=", 1) for line in out.splitlines())


@pytest.mark.parametrize("accelerator", SLICES)
def test_each_generation_resolves_to_its_hosts_runtime_and_zone(accelerator):
    pod, chips, hosts, per_host, runtime, zone = SLICES[accelerator]
    facts = info(ACCELERATOR=accelerator, BUCKET="gs://b")
    assert facts["pod"] == ("yes" if pod else "no")
    assert (int(facts["chips"]), int(facts["hosts"])) == (chips, hosts)
    assert int(facts["chips_per_host"]) == per_host and int(facts["devices"]) == chips
    assert (facts["runtime"], facts["zone"]) == (runtime, zone)
    create = ok("tpu/create.sh", ACCELERATOR=accelerator, TPU_NAME="t")
    [argv] = commands(create)
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "t"]
    assert {f"--accelerator-type={accelerator}", f"--version={runtime}",
            f"--zone={zone}"} <= set(argv)


@pytest.mark.parametrize("accelerator", SLICES)
def test_setup_installs_python_311_and_jax_tpu_and_checks_every_chip(accelerator):
    pod, chips, *_ = SLICES[accelerator]
    out = ok("tpu/setup.sh", ACCELERATOR=accelerator, BUCKET="gs://b")
    assert "gcsfuse" not in out and "python3 -m venv" not in out
    (_, install), (_, check) = remote(out)
    assert "uv venv --python 3.11 .venv" in install
    assert 'uv pip install --python .venv/bin/python -r requirements.txt "jax[tpu]"' in install
    # The code folder is replaced, and nothing else.
    assert "rm -rf ~/gumbel-jax &&" in install and install.count("rm -rf") == 1
    assert "sys.version_info >= (3, 11)" in check
    assert f"jax.device_count() == {chips}" in check
    # On a pod the hosts join before counting devices (all of them, not this host's).
    if pod:
        assert check.index("jax.distributed.initialize()") < check.index("jax.device_count()")
    else:
        assert "jax.distributed" not in check
    status, _, err = dry_run("tpu/setup.sh", ACCELERATOR=accelerator, PYTHON_VERSION="3.10")
    assert status == 2 and "Python >= 3.11" in err


@pytest.mark.parametrize("accelerator", SLICES)
def test_launch_runs_outside_the_code_and_distributed_only_on_pods(accelerator):
    pod = SLICES[accelerator][0]
    out = ok("tpu/launch.sh", "hotpotqa", "--cell", "hotpotqa_g_rerank", "--set", "a=b c",
             ACCELERATOR=accelerator, BUCKET="gs://b//")
    [(worker, command)] = remote(out)
    assert worker == "all"
    argv = shlex.split(command.split(" > ")[0].split("nohup ")[1])
    assert argv[:4] == [".venv/bin/python", "-m", "experiments.reproduce", "--table"]
    workdir = argv[argv.index("--workdir") + 1]
    assert ("--distributed" in argv) == pod
    assert argv[-4:] == ["--cell", "hotpotqa_g_rerank", "--set", "a=b c"]
    assert "gcsfuse" not in out and "/mnt/" not in out
    if pod:  # one run folder for every host: the bucket (trailing slashes dropped)
        assert workdir == "gs://b/runs"
    else:  # the worker's disk, beside the code folder ~/gumbel-jax
        assert workdir == "~/gj_runs" and command.startswith("mkdir -p ~/gj_runs && ")
    assert not workdir.startswith(("gumbel-jax", "~/gumbel-jax", "runs"))
    status, _, err = dry_run("tpu/launch.sh", "hotpotqa", ACCELERATOR=accelerator)
    if pod:  # a pod needs the bucket for its runs
        assert status == 2 and "BUCKET" in err
    else:
        assert status == 0


@pytest.mark.parametrize("workdir", ["runs/paper", "~/gumbel-jax/runs", "~/gumbel-jax",
                                     "/home/me/gumbel-jax/runs", "s3://b/runs", "~/a b"])
def test_a_workdir_in_the_code_folder_or_relative_is_refused(workdir):
    status, _, err = dry_run("tpu/launch.sh", "hotpotqa", WORKDIR=workdir)
    assert status == 2 and "WORKDIR" in err
    assert dry_run("tpu/setup.sh", WORKDIR=workdir)[0] == 2  # before setup deletes it


def test_pods_and_spot_keep_runs_in_the_bucket():
    out = ok("tpu/launch.sh", "hotpotqa", SPOT="1", BUCKET="gs://b")
    assert "--workdir gs://b/runs" in remote(out)[0][1]
    status, _, err = dry_run("tpu/launch.sh", "hotpotqa", SPOT="1", WORKDIR="~/runs")
    assert status == 2 and "Spot" in err
    status, _, err = dry_run("tpu/launch.sh", "hotpotqa", ACCELERATOR="v4-32", WORKDIR="/nfs/r")
    assert status == 2 and "gs://" in err
    assert info(BUCKET="my-bucket/")["bucket"] == "gs://my-bucket"
    assert dry_run("tpu/info.sh", BUCKET="s3://b")[0] == 2


@pytest.mark.parametrize("accelerator", ["v4-32", "v5litepod-16"])
def test_a_batch_that_does_not_split_over_the_slice_is_refused_with_the_ways_out(accelerator):
    status, out, err = dry_run("tpu/launch.sh", "nq", ACCELERATOR=accelerator, BUCKET="gs://b")
    assert status == 2 and out == ""
    assert "global batch 8" in err and "16 batch shards" in err
    assert "MESH=-1,1,2" in err and "--set data.batch_size=16" in err
    status, _, err = dry_run("tpu/launch.sh", "all", ACCELERATOR=accelerator, BUCKET="gs://b")
    assert status == 2 and "table nq" in err and "table triviaqa" in err
    assert "hotpotqa" not in err
    # Either way out launches: the paper's batch over a (data 8, tensor 2) mesh, or batch 16.
    out = ok("tpu/launch.sh", "nq", ACCELERATOR=accelerator, BUCKET="gs://b", MESH="-1,1,2")
    assert "--mesh -1,1,2 --distributed" in out
    ok("tpu/launch.sh", "nq", "--set", "data.batch_size=16", ACCELERATOR=accelerator,
       BUCKET="gs://b")
    ok("tpu/launch.sh", "triviaqa", "--mesh", "8,1,2", ACCELERATOR=accelerator, BUCKET="gs://b")
    status, _, err = dry_run("tpu/launch.sh", "nq", ACCELERATOR=accelerator, MESH="-1,3,1",
                             BUCKET="gs://b")
    assert status == 2 and "does not fit" in err


def test_every_table_fits_every_single_host_and_the_batches_match_the_configs():
    from experiments.paper import TABLES, load_rows

    for accelerator, (pod, *_rest) in SLICES.items():
        facts = info(ACCELERATOR=accelerator)
        batches = {key[len("batch_"):]: value for key, value in facts.items()
                   if key.startswith("batch_")}
        assert set(batches) == set(TABLES)
        fits = {table for table, value in batches.items() if value.endswith("(ok)")}
        # CEPE's NQ rows (batch 2) need a tensor-parallel mesh on every slice.
        unfit = {"cepe"} | ({"nq", "triviaqa"} if pod else set())
        assert fits == set(TABLES) - unfit
    configs = {}
    for row in load_rows():
        configs.setdefault(row.table, set()).add(row.experiment.data.batch_size)
    assert {t: {int(b) for b in v.split()[0].split(",")} for t, v in batches.items()} == configs


def test_spot_goes_through_a_queued_resource_and_resume_recreates_everything():
    out = ok("tpu/create.sh", SPOT="1", ACCELERATOR="v6e-8", TPU_NAME="t")
    create, describe = commands(out)
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "t-qr"]
    assert {"--node-id=t", "--spot", "--runtime-version=v2-alpha-tpuv6e",
            "--accelerator-type=v6e-8", "--zone=us-east5-b"} <= set(create)
    assert describe[4] == "describe"
    [delete] = commands(ok("tpu/delete.sh", SPOT="1", TPU_NAME="t"))
    assert delete[3:6] == ["queued-resources", "delete", "t-qr"] and "--force" in delete
    [delete] = commands(ok("tpu/delete.sh", TPU_NAME="t"))
    assert delete[3:6] == ["tpu-vm", "delete", "t"]
    # resume: delete -> create -> setup -> data -> launch, the runs staying in the bucket.
    out = ok("tpu/resume.sh", "hotpotqa", "--seeds", "1", SPOT="1", BUCKET="gs://b")
    steps = [argv[3:5] for argv in commands(out) if argv[0] == "gcloud"]
    assert steps[:2] == [["queued-resources", "delete"], ["queued-resources", "create"]]
    ssh = [command for _, command in remote(out)]
    assert "uv venv" in ssh[0] and "jax.device_count()" in ssh[1]
    assert "gcloud storage rsync -r gs://b/$d ~/$d" in ssh[2]
    assert "--workdir gs://b/runs" in ssh[3] and ssh[3].endswith("--seeds 1 > ~/gj_hotpotqa.log "
                                                                   "2>&1 < /dev/null &")
    status, _, err = dry_run("tpu/resume.sh", "hotpotqa")  # runs on the VM's own disk
    assert status == 2 and "resume.sh recreates the VM" in err
    status, out, _ = dry_run("tpu/resume.sh", "nq", ACCELERATOR="v4-32", BUCKET="gs://b")
    assert status == 2 and out == ""  # refused before anything is deleted


def test_copy_data_skips_a_missing_folder_and_collect_reads_the_bucket():
    status, _, err = dry_run("tpu/copy_data.sh")
    assert status == 2 and "set BUCKET" in err
    out = ok("tpu/copy_data.sh", BUCKET="gs://b/", LOCAL_TFDS="/data/tfds")
    assert commands(out)[0] == ["gcloud", "storage", "rsync", "-r", "/data/tfds", "gs://b/tfds"]
    [(worker, pull)] = remote(out)
    assert worker == "all"
    assert "if gcloud storage ls gs://b/$d/ >/dev/null 2>&1; then" in pull
    assert "not in the bucket, skipped" in pull
    # A pod's runs are in the bucket: their results come to worker 0, then the tables here.
    out = ok("tpu/collect.sh", ACCELERATOR="v5litepod-16", BUCKET="gs://b")
    [(worker, build)] = remote(out)
    assert worker == "0" and "gcloud storage rsync -r -x" in build
    assert "checkpoints" in build and "gs://b/runs ~/gj_collect" in build
    assert "make_tables --workdir ~/gj_collect" in build
    scp = [argv for argv in commands(out) if argv[4] == "scp"]
    assert [argv[5] for argv in scp] == ["gumbel-jax:gj_collect/tables.md",
                                        "gumbel-jax:gj_collect/tables.csv"]
    out = ok("tpu/collect.sh", BUCKET="gs://b")  # one host: its disk, copied to the bucket
    builds = [command for _, command in remote(out)]
    assert "make_tables --workdir ~/gj_runs" in builds[0]
    assert builds[1] == "gcloud storage rsync -r ~/gj_runs gs://b/runs"
    assert "gumbel-jax:gj_runs/tables.md" in out


def test_unknown_accelerators_are_refused():
    for accelerator in ("v3-8", "v5litepod", "v4-7", "tpu"):
        status, _, err = dry_run("tpu/info.sh", ACCELERATOR=accelerator)
        assert status == 2 and "ACCELERATOR" in err, accelerator


def gpu(*args: str, **env: str) -> list[str]:
    out = ok("gpu/run.sh", "hotpotqa", *args, **env)
    return shlex.split(out)


def test_gpu_one_host_uses_all_its_gpus_in_one_process():
    argv = gpu()
    assert argv[1:4] == ["-m", "experiments.reproduce", "--table"]
    assert "--distributed" not in argv
    assert argv[argv.index("--mesh") + 1] == "-1,1,1" and "model.attention=cudnn" in argv


@pytest.mark.parametrize("launcher", [
    {"SLURM_NTASKS": "16", "SLURM_LOCALID": "3", "SLURM_NTASKS_PER_NODE": "8"},
    {"SLURM_NTASKS": "16", "SLURM_LOCALID": "0", "SLURM_TASKS_PER_NODE": "8(x2)"},
    {"OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_LOCAL_SIZE": "8"},
])
def test_gpu_clusters_run_one_task_per_gpu(launcher):
    argv = gpu(GPUS_PER_NODE="8", **launcher)
    assert "--distributed" in argv and "--coordinator" not in argv  # the launcher tells JAX
    argv = gpu(CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7", **launcher)
    assert "--distributed" in argv


@pytest.mark.parametrize("launcher", [
    {"SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_NTASKS_PER_NODE": "1"},
    {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "1"},
])
def test_gpu_one_task_per_node_is_refused(launcher):
    """JAX would give each task only the GPU of its local rank: GPU 0 of every node."""
    status, out, err = dry_run("gpu/run.sh", "hotpotqa", GPUS_PER_NODE="8", **launcher)
    assert status == 2 and out == ""
    assert "one task per GPU" in err and "8" in err
    # A task that sees one GPU (srun --gpus-per-task=1) is refused the same way.
    status, _, err = dry_run("gpu/run.sh", "hotpotqa", CUDA_VISIBLE_DEVICES="0",
                             **{**launcher, "SLURM_NTASKS_PER_NODE": "8",
                                "OMPI_COMM_WORLD_LOCAL_SIZE": "8"})
    assert status == 2 and "1 GPU(s) visible" in err


def test_gpu_nodes_without_a_launcher_name_their_coordinator():
    argv = gpu("--seeds", "1", NUM_NODES="2", NODE_RANK="1", COORDINATOR="h0:1234")
    joined = " ".join(argv)
    assert "--distributed --coordinator h0:1234 --num_processes 2 --process_id 1" in joined
    assert argv[-2:] == ["--seeds", "1"]
    status, _, err = dry_run("gpu/run.sh", "hotpotqa", NUM_NODES="2", NODE_RANK="1")
    assert status == 2 and "COORDINATOR" in err


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse_and_pass_shellcheck(script):
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True,
                            check=False, cwd=script.parent)
    assert result.returncode == 0, result.stdout


def test_the_cepe_table_is_launched_on_a_tensor_parallel_mesh():
    """Its NQ rows' batch of 2 does not split over a v4-8's 4 data shards: refused with the
    way out, and the documented mesh (data 2 x tensor 2) launches."""
    status, _, err = dry_run("tpu/launch.sh", "cepe", ACCELERATOR="v4-8")
    assert status == 2 and "table cepe: its global batch 2 does not split" in err
    assert "MESH=-1,1,2" in err
    out = ok("tpu/launch.sh", "cepe", ACCELERATOR="v4-8", MESH="-1,1,2")
    assert "--mesh -1,1,2" in out and "--table cepe" in out
