"""Every shell command shown in README.md and docs/*.md runs as written.

The commands are the lines of the documents' fenced ```bash blocks (a trailing backslash continues a line).
Each one is checked as far as this machine allows:
- all: their shell syntax (`bash -n`), and that this file knows what they are (a new kind of command fails
  here until it gets its check);
- trainings (`python -m distrib.train`, torchrun, sbatch, `launch.submit`): the config and overrides go through
  every check the job makes before a process group forms (the config's own, the refit group, the world's
  batch, TorchRec's limits in a sharded mode) for the world size the command names;
- the ones that need neither a GPU, SLURM, other hosts nor a download also run, each in a folder of its own,
  as written but for one epoch (the MovieLens copies from $DISTRIB_TEST_DATA, a generated file for
  `data.path`); `distrib.evaluate` and `distrib.recommend` then run as written on the run the README's
  training left;
- `python -c`: runs; installs (they need the network): the extras and pins they name match pyproject.toml;
  pytest: the markers they select are declared.
What a command needs beyond this machine is in its test id: gpu, slurm, hosts, download (a MovieLens release
not in $DISTRIB_TEST_DATA), data (one that is), network.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tomllib
from packaging.requirements import Requirement

from distrib.config import load_config, with_refit_group
from distrib.errors import UserError
from distrib.parallel.distributed import DistEnv
from distrib.train import check_world, parse_args, with_world_batch
from tests.helpers import REPO, check_sharded_config, clean_env

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
LOCAL_DATA = ("ml-100k", "ml-latest-small")  # the releases $DISTRIB_TEST_DATA holds
ASSUMED_GPUS_PER_NODE = 8  # --nproc_per_node=gpu: a world size to check the batch against


@dataclass(frozen=True)
class Shown:
    """One command as a document shows it."""
    document: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.document}:{self.line}"

    @property
    def steps(self) -> list[list[str]]:
        """The command's simple commands (split at `&&`), each without its leading VAR=value assignments."""
        steps, current = [], []
        for word in shlex.split(self.text, comments=True) + ["&&"]:
            if word == "&&":
                while current and ENV_ASSIGNMENT.match(current[0]):
                    current.pop(0)
                steps.append(current)
                current = []
            else:
                current.append(word)
        return [s for s in steps if s]


def shown_commands() -> list[Shown]:
    found = []
    for path in DOCUMENTS:
        text = path.read_text()
        for block in FENCE.finditer(text):
            first = text.count("\n", 0, block.start(1)) + 1
            pending, start = "", 0
            for offset, line in enumerate(block.group(1).splitlines()):
                if not pending:
                    start = first + offset
                if line.rstrip().endswith("\\"):
                    pending += line.rstrip()[:-1] + " "
                    continue
                text_line = (pending + line).strip()
                pending = ""
                if text_line and not text_line.startswith("#"):
                    found.append(Shown(str(path.relative_to(REPO)), start, text_line))
    return found


@dataclass(frozen=True)
class Job:
    """A training command: what distrib.train receives, on how many ranks, and what it needs to run."""
    shown: Shown
    launcher: str  # python, run (distrib.run), torchrun, sbatch, submit
    args: tuple[str, ...]  # CONFIG and key=value, as distrib.train gets them
    world_size: int
    needs: frozenset[str]
    launcher_options: tuple[str, ...] = ()


def option(words: list[str], name: str, default: str) -> str:
    """`--name=value` or `--name value` among a launcher's words."""
    for i, word in enumerate(words):
        if word.startswith(f"{name}="):
            return word.split("=", 1)[1]
        if word == name and i + 1 < len(words):
            return words[i + 1]
    return default


def as_job(shown: Shown) -> Job | None:
    """The training command in `shown`, or None when it is not one."""
    words = shown.steps[-1]
    if words[:3] in (["python", "-m", "distrib.train"], ["python3", "-m", "distrib.train"]):
        return job(shown, "python", words[3:], 1, set())
    if words[0] == "torchrun" and "distrib.train" in words:
        at = words.index("distrib.train")
        return torchrun_job(shown, "torchrun", words[1:at - 1], words[at + 1:])
    if words[:3] == ["python", "-m", "distrib.run"]:  # torchrun's options (--name=value), then distrib's arguments
        options = [w for w in words[3:] if w.startswith("--")]
        return torchrun_job(shown, "run", options, words[3 + len(options):])
    if words[0] == "sbatch" and "slurm/train.sbatch" in words:
        at = words.index("slurm/train.sbatch")
        options = words[1:at]
        world = int(option(options, "--nodes", "1")) * int(option(options, "--ntasks-per-node", "1"))
        needs = {"slurm", "gpu"} if option(options, "--gpus-per-node", "") else {"slurm"}
        return job(shown, "sbatch", words[at + 1:], world, needs, options)
    if words[:3] == ["python", "-m", "launch.submit"]:
        return job(shown, "submit", words[3:], 0, set() if "--local" in words else {"slurm"})
    return None


def torchrun_job(shown: Shown, launcher: str, options: list[str], args: list[str]) -> Job:
    nproc, nodes = option(options, "--nproc_per_node", "1"), int(option(options, "--nnodes", "1"))
    needs = {"gpu"} if nproc == "gpu" else set()
    if nodes > 1:
        needs.add("hosts")
    world = nodes * (ASSUMED_GPUS_PER_NODE if nproc == "gpu" else int(nproc))
    return job(shown, launcher, args, world, needs, options)


def job(shown: Shown, launcher: str, args: list[str], world: int, needs: set[str], options=()) -> Job:
    if launcher == "submit":
        from launch.submit import parse_args as submit_args

        ns = submit_args(args)
        args = [ns.config, *ns.overrides] if ns.config else ns.overrides
    cfg = load_config(*parse_args(list(args)))
    if launcher == "submit":
        world = cfg.slurm.nodes * (cfg.slurm.gpus_per_node or cfg.slurm.tasks_per_node)
        needs |= {"gpu"} if cfg.slurm.gpus_per_node else set()
    if cfg.train.device == "cuda":
        needs.add("gpu")
    if cfg.data.name not in ("synthetic", "file"):  # a MovieLens release
        needs.add("data" if cfg.data.name in LOCAL_DATA else "download")
    return Job(shown, launcher, tuple(args), world, frozenset(needs), tuple(options))


def check_before_any_group(job: Job) -> None:
    """What the job checks before a process group forms, for the world size the command gives it."""
    cfg = with_refit_group(load_config(*parse_args(list(job.args))))
    env = DistEnv(rank=0, local_rank=0, world_size=job.world_size, master_addr="127.0.0.1", master_port=0,
                  launcher="torchrun")
    cfg = with_world_batch(cfg, env)
    check_world(cfg, env)
    if cfg.dist.embedding_sharding != "none":
        check_sharded_config(cfg)
    if job.launcher == "run":  # the launcher's own check, before any worker starts
        from distrib.run import check, parse

        check(*parse([*job.launcher_options, *job.args]))
    if job.launcher == "submit":
        from launch.submit import check_world_size, parse_sweep, plan_runs
        from launch.submit import parse_args as submit_args

        ns = submit_args(job.shown.steps[-1][3:])
        for _, member, _ in plan_runs(ns.config, ns.overrides, parse_sweep(ns.sweep))[2]:
            check_world_size(member)


COMMANDS = shown_commands()
JOBS = [j for j in map(as_job, COMMANDS) if j is not None]
RUNNABLE_NEEDS = {"data"}  # what this machine has: the MovieLens copies of $DISTRIB_TEST_DATA
RUN_HERE = [j for j in JOBS if j.launcher in ("python", "run", "torchrun") and j.needs <= RUNNABLE_NEEDS]
USES_A_RUN = [c for c in COMMANDS if c.steps[-1][:3] in (["python", "-m", "distrib.evaluate"],
                                                          ["python", "-m", "distrib.recommend"])]


def job_id(job: Job) -> str:
    return f"{job.shown} [{', '.join(sorted(job.needs)) or 'here'}]"


def kind(shown: Shown) -> str:
    """What a command is, so that each kind has its check; every command of the documents must have one."""
    kinds = []
    for words in shown.steps:
        program = words[0]
        if program in (".", "source"):
            kinds.append("activate")
        elif program == "pip" or words[:3] in (["python", "-m", "pip"], ["python3", "-m", "pip"]):
            kinds.append("install")
        elif words[:3] in (["python3", "-m", "venv"], ["python", "-m", "venv"]):
            kinds.append("venv")
        elif words[:2] == ["python", "-c"]:
            kinds.append("python-c")
        elif words[:3] == ["python", "-m", "pytest"]:
            kinds.append("pytest")
        elif words[:3] in (["python", "-m", "distrib.evaluate"], ["python", "-m", "distrib.recommend"]):
            kinds.append("uses-a-run")
        elif as_job(Shown(shown.document, shown.line, shlex.join(words))) is not None:
            kinds.append("training")
        else:
            kinds.append("unknown")
    return "+".join(kinds)


def test_the_documents_show_the_commands_this_file_checks():
    assert len(COMMANDS) >= 25, [str(c) for c in COMMANDS]
    assert {c.document for c in COMMANDS} >= {"README.md", "docs/launching.md", "docs/sharding.md"}
    sharding = [j for j in JOBS if j.shown.document == "docs/sharding.md"]
    assert sharding and "dist.embedding_sharding=row_wise" in sharding[0].args
    assert any(j.shown.document == "README.md" and "configs/quickstart.yaml" in j.args for j in RUN_HERE)
    unknown = [f"{c}: {c.text}" for c in COMMANDS if "unknown" in kind(c)]
    assert not unknown, f"commands this file has no check for (add one): {unknown}"


@pytest.mark.slow
@pytest.mark.parametrize("shown", COMMANDS, ids=str)
def test_every_command_is_valid_shell(shown):
    proc = subprocess.run(["bash", "-n", "-c", shown.text], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, f"{shown}: {proc.stderr}"


@pytest.mark.parametrize("job", JOBS, ids=job_id)
def test_every_training_command_passes_the_checks_made_before_training(job):
    for path in (a for a in job.args if a.endswith((".yaml", ".yml"))):
        assert (REPO / path).is_file(), f"{job.shown}: {path} does not exist"
    try:
        check_before_any_group(job)
    except UserError as err:
        pytest.fail(f"{job.shown}: {job.shown.text}\n  refused: {err}")


@pytest.fixture(scope="module")
def workroot(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("as-written")


def user_folder(root: Path) -> Path:
    """A folder where the documents' commands run as a user runs them: the shipped configs at configs/, the
    user's own ratings file (my_ratings.csv) beside them; run directories get created under runs/."""
    root.mkdir(parents=True)
    (root / "configs").symlink_to(REPO / "configs")
    rng = np.random.default_rng(0)
    users, items = rng.integers(1, 200, 6000), rng.integers(1, 300, 6000)
    ratings = rng.integers(1, 6, 6000)
    lines = ["user,item,rating"] + [f"{u},{i},{r}" for u, i, r in zip(users, items, ratings)]
    (root / "my_ratings.csv").write_text("\n".join(lines) + "\n")
    return root


RAN: dict[tuple[str, ...], tuple[Path, subprocess.CompletedProcess]] = {}


def run_as_written(job: Job, workroot: Path, data_root: Path | None) -> tuple[Path, subprocess.CompletedProcess]:
    """The command as shown, in a user folder of its own, for one epoch (both phases with train.refit), W&B
    off; a release it names is read from $DISTRIB_TEST_DATA, prepared arrays go to the folder. Returns the
    folder and the finished process; identical commands run once."""
    args = [a for a in job.args if not a.startswith("data.root=")]  # the placeholder, or a user's own folder
    args += ["train.epochs=1", "tracking.mode=disabled", "data.cache_dir=cache"]
    if "data" in job.needs:
        args.append(f"data.root={data_root}")
    if job.launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", *job.launcher_options, "-m", "distrib.train", *args]
    elif job.launcher == "run":
        cmd = [sys.executable, "-m", "distrib.run", *job.launcher_options, *args]
    else:
        cmd = [sys.executable, "-m", "distrib.train", *args]
    key = tuple(cmd)
    if key not in RAN:
        folder = user_folder(workroot / f"{Path(job.shown.document).stem}-{job.shown.line}")
        env = {**clean_env(), "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
        RAN[key] = folder, subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=900)
    return RAN[key]


@pytest.mark.slow
@pytest.mark.parametrize("job", RUN_HERE, ids=job_id)
def test_training_commands_that_need_nothing_more_run_as_written_for_one_epoch(job, workroot, request):
    data_root = request.getfixturevalue("data_root") if "data" in job.needs else None
    folder, proc = run_as_written(job, workroot, data_root)
    assert proc.returncode == 0, (f"{job.shown}: {job.shown.text}\nexit {proc.returncode}\n"
                                  f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    run_dir = folder / load_config(*parse_args(list(job.args))).run.dir
    assert (run_dir / "summary.json").is_file(), f"{job.shown}: no summary.json in {run_dir}"


@pytest.mark.slow
@pytest.mark.parametrize("shown", USES_A_RUN, ids=str)
def test_commands_on_a_finished_run_run_as_written(shown, workroot, data_root):
    """The README trains configs/ml-100k.yaml into runs/ml-100k first; these commands use that run."""
    trainer = next(j for j in RUN_HERE if j.shown.document == shown.document and "configs/ml-100k.yaml" in j.args)
    folder, training = run_as_written(trainer, workroot, data_root)
    assert training.returncode == 0, f"{trainer.shown}: {training.stderr[-2000:]}"
    words = shown.steps[-1]
    env = {**clean_env(), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, *words[1:]], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{shown}: {shown.text}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert proc.stdout.strip(), f"{shown} printed nothing"


@pytest.mark.slow
@pytest.mark.parametrize("shown", [c for c in COMMANDS if "python-c" in kind(c)], ids=str)
def test_python_one_liners_run_as_written(shown):
    words = shown.steps[-1]
    proc = subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True, timeout=120,
                          env=clean_env())
    assert proc.returncode == 0, f"{shown}: {proc.stderr[-2000:]}"


PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.mark.parametrize("shown", [c for c in COMMANDS if "install" in kind(c)], ids=lambda c: f"{c} [network]")
def test_install_commands_name_extras_and_pins_the_project_declares(shown):
    extras = PYPROJECT["project"]["optional-dependencies"]
    torch_pins = [Requirement(r) for r in PYPROJECT["project"]["dependencies"] if r.startswith("torch")]
    for words in shown.steps:
        if "install" not in words:
            continue
        for word in words[words.index("install") + 1:]:
            if word.startswith("."):
                named = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", word)
                assert named, f"{shown}: {word}: not an install of this project"
                for extra in (named.group(1) or "").split(","):
                    assert not extra or extra in extras, f"{shown}: pyproject.toml has no extra [{extra}]"
            elif word.startswith("torch=="):
                version = word.split("==", 1)[1]
                assert all(version in pin.specifier for pin in torch_pins), f"{shown}: torch {version} vs {torch_pins}"
            elif word.startswith("torchrec=="):
                assert "fbgemm-gpu-cpu==" + word.split("==", 1)[1] in extras["torchrec"], \
                    f"{shown}: {word} is not the version [torchrec]'s FBGEMM pin is for"


@pytest.mark.parametrize("shown", [c for c in COMMANDS if "pytest" in kind(c)], ids=str)
def test_pytest_commands_select_declared_markers(shown):
    declared = {m.split(":")[0] for m in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}
    words = shown.steps[-1]
    expression = option(words[3:], "-m", "")
    named = set(re.findall(r"\w+", expression)) - {"not", "and", "or"}
    assert named <= declared, f"{shown}: markers {named - declared} are not declared in pyproject.toml"
