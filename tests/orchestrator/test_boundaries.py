"""Trust at the boundaries, tried as a careless or hostile user would: names that reach a shell, a path
or a query; secrets in URLs; the sbatch script; a run tag that names what is deleted."""

import os
import stat
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from cvstudy.orchestrator.boundaries import check_name, inside, redact
from cvstudy.orchestrator.errors import SweepError, UserError
from cvstudy.orchestrator.sweep.slurm import EnvRef, SlurmOptions, render_script, shared_storage_notes
from cvstudy.orchestrator.sweep.storage import postgresql_connections
from cvstudy.orchestrator.tracking.client import Tracker
from cvstudy.orchestrator.tracking.results import load_state
from cvstudy.orchestrator.tracking.schema import Tag
from cvstudy.orchestrator.tracking.states import StateKeeper
from cvstudy.trainers.config import TrainConfig
from cvstudy.trainers.state import RandomState, TrainState
from tests.conftest import postgres_url, run_cli
from tests.orchestrator.test_sweep import study_file

HOSTILE = ["x\ntouch P_$(id -u)", "../../esc", "a/b", "bob's study", "", "-x", "a;b", "`id`", "$(id)", "x" * 101]


@pytest.mark.parametrize(
    "url, shown",
    [
        ("http://user:pw@host:5000", "http://user:***@host:5000"),
        ("postgresql://cvstudy:s3cret@db/optuna", "postgresql://cvstudy:***@db/optuna"),
        ("postgres://u:p@db/x", "postgres://u:***@db/x"),  # a scheme typo is redacted too
        ("mysql://db/optuna?user=u&password=s3cret", "mysql://db/optuna?user=u&password=***"),
        ("https://host/api?token=abc&x=1", "https://host/api?token=***&x=1"),
        ("sqlite:////tmp/a@b/optuna.db", "sqlite:////tmp/a@b/optuna.db"),  # a path with @ is no user info
        ("http://user@host", "http://user@host"),
        ("journal:///shared/study.journal", "journal:///shared/study.journal"),
    ],
)
def test_one_redaction_for_every_url(url, shown):
    assert redact(url) == shown


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_study_names_are_refused(name):
    with pytest.raises(UserError, match="not a usable study name"):
        check_name(name, "--study")


def test_usable_names_pass_and_paths_stay_inside(tmp_path):
    for name in ("resnet50", "resnet50_gpu", "gpu-check-k1", "photos.v2"):
        assert check_name(name, "--study") == name
    assert inside(tmp_path / "reports", tmp_path / "reports" / "a+b")
    with pytest.raises(UserError, match="outside"):
        inside(tmp_path / "reports", tmp_path / "reports" / ".." / ".." / "esc")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["file", "flag"])
def test_a_hostile_name_exits_2_in_one_line_with_nothing_created(tmp_path, tiny_data, how):
    path = study_file(tmp_path, tiny_data)
    if how == "file":
        path.write_text(path.read_text().replace("name: tiny", 'name: "x\\ntouch P_$(id -u)"'))
        args = ["sweep", "--study-file", path]
    else:
        args = ["sweep", "--study-file", path, "--study", "../../esc"]
    proc = run_cli(args, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "not a usable study name" in proc.stderr
    assert (str(path) in proc.stderr) if how == "file" else ("--study" in proc.stderr)
    assert not [p for p in tmp_path.iterdir() if p.name not in ("data", "tiny.yaml")]  # no store, no run, no file


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(partition="gpu\nrm -rf ~"), "--slurm-partition"),
        (dict(partition="gpu;id"), "--slurm-partition"),
        (dict(time="01:00:00\n"), "--slurm-time"),
        (dict(sbatch_args=("--account=lab\n#SBATCH --wrap=id",)), "control character"),
        (dict(sbatch_args=("rm -rf ~",)), "expected an sbatch option"),
    ],
)
def test_hostile_scheduler_values_are_refused(options, message):
    with pytest.raises((SweepError, UserError), match=message):
        SlurmOptions(**options)


def test_a_job_array_is_warned_of_sqlite_files_and_of_more_workers_than_were_measured():
    shared = ("journal:////shared/s.journal", "http://login:5000")
    assert shared_storage_notes(*shared, tasks=32) == []  # 32: measured on the journal and PostgreSQL
    (past,) = shared_storage_notes(*shared, tasks=33)
    assert past.startswith("--slurm-tasks 33: more workers on one study than cvstudy has measured (32,")
    (local,) = shared_storage_notes("sqlite:////home/me/optuna.db", "http://login:5000", tasks=4)
    assert local.startswith("--storage use SQLite: safe while every task runs on one node")
    both = shared_storage_notes("sqlite:////a/optuna.db", "sqlite:////a/mlflow.db", tasks=64)
    assert both[0].startswith("--storage and --tracking-uri use SQLite") and both[1].startswith("--slurm-tasks 64")
    # a PostgreSQL server allowing 100 connections with 8 open: 23 workers of 4 fit exactly (92), 24 do not
    pg = ("postgresql://u@db/optuna", "http://login:5000")
    assert shared_storage_notes(*pg, tasks=23, connections=(100, 8)) == []
    (full,) = shared_storage_notes(*pg, tasks=24, connections=(100, 8))
    assert full.startswith("--slurm-tasks 24: the workers may open up to 96 PostgreSQL connections (4 each)")
    assert "the server has 92 left (max_connections 100, 8 open)" in full


@pytest.mark.postgres
def test_the_postgresql_servers_connection_limit_is_read_from_the_server():
    import sqlalchemy

    url = postgres_url()
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:  # the oracle: the server's own settings view
        setting = "SELECT setting FROM pg_settings WHERE name = 'max_connections'"
        limit = int(conn.execute(sqlalchemy.text(setting)).scalar_one())
    engine.dispose()
    said = postgresql_connections(url)
    assert said is not None and said[0] == limit and 1 <= said[1] <= limit  # its own connection at least
    assert postgresql_connections("journal:////tmp/x.journal") is None
    assert postgresql_connections("postgresql://nobody:wrong@127.0.0.1:1/none") is None  # no server: no warning


@pytest.mark.slow
def test_the_script_quotes_every_word_and_takes_secrets_from_the_environment(tmp_path):
    workdir = tmp_path / "my work dir"  # a space: the #SBATCH --output line must keep its path whole
    workdir.mkdir()
    command = [
        "cvstudy",
        "sweep",
        "--study",
        "tiny",
        "--set",
        "note=$(touch PWNED)`id`;x",
        "--storage",
        EnvRef("CVSTUDY_STORAGE"),
    ]
    script = render_script(
        SlurmOptions(tasks=2, partition="gpu"),
        command,
        workdir,
        "cvstudy-tiny",
        str(workdir / "slurm" / "tiny-%A_%a.out"),
    )
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert f'#SBATCH --output="{workdir}/slurm/tiny-%A_%a.out"' in directives
    assert "--array=0-1" in script and "--partition=gpu" in script and "s3cret" not in script
    # run it under stub srun/scontrol that record what they receive
    stubs = tmp_path / "bin"
    stubs.mkdir()
    record = tmp_path / "argv"
    (stubs / "srun").write_text(f'#!/bin/bash\nshift 2\nprintf "%s\\n" "$@" > {record}\nexit 0\n')
    (stubs / "scontrol").write_text("#!/bin/bash\nexit 0\n")
    for stub in stubs.iterdir():
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = {
        **os.environ,
        "PATH": f"{stubs}:{os.environ['PATH']}",
        "CVSTUDY_STORAGE": "postgresql://u:s3cret@db/o",
        "SLURM_ARRAY_JOB_ID": "7",
        "SLURM_ARRAY_TASK_ID": "0",
    }
    done = subprocess.run(["bash", str(path)], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    argv = record.read_text().splitlines()
    assert argv == [env[w.name] if isinstance(w, EnvRef) else w for w in command]  # each word whole, literal
    assert not list(tmp_path.rglob("PWNED"))  # nothing a word carried ran


def _tiny_state(epoch: int) -> TrainState:
    return TrainState(
        epoch=epoch,
        step=epoch,
        model={"w": torch.zeros(2)},
        optimizer={"state": {}, "param_groups": []},
        random=RandomState(device=torch.Generator().get_state(), host={"seed": 0}),
        history=[],
        best_row=None,
        best_val=None,
        best_state=None,
        stale_epochs=0,
    )


@pytest.mark.slow
def test_a_state_tag_never_names_what_is_deleted_outside_the_runs_state(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with tracker.run("exp", "r") as run:
        root = Path(run.client.get_run(run.run_id).info.artifact_uri.removeprefix("file://"))
        victim = root / ".." / ".." / "victim"
        victim.mkdir(parents=True)
        (victim / "keep.txt").write_text("mine")
        run.set_tags({Tag.STATE: "state/../../../victim", Tag.STATE_EPOCH: "3"})
        with pytest.raises(LookupError):
            load_state(run.client, run.run_id)
        keeper = StateKeeper(run, TrainConfig(), min_seconds=0)
        assert keeper.current is None
        keeper.write(_tiny_state(4))  # the next write deletes the previous state: never the tag's path
        assert (victim / "keep.txt").read_text() == "mine"
        assert run.client.get_run(run.run_id).data.tags[Tag.STATE] == "state/epoch-0004"


def _postgres_storage_with_password(secret: str) -> tuple[str, Callable[[], str]]:
    """A PostgreSQL role of its own whose password is ``secret``, on the test server; returns the storage
    URL with that password and a function dumping every row of the database's tables as text."""
    import sqlalchemy

    url = postgres_url()
    role = f"cv{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as db:
        db.execute(sqlalchemy.text(f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'"))
        db.execute(sqlalchemy.text(f"CREATE DATABASE {role} OWNER {role}"))
    parsed = sqlalchemy.engine.make_url(url)
    storage = f"postgresql://{role}:{secret}@{parsed.host}:{parsed.port}/{role}"

    def dump() -> str:
        engine = sqlalchemy.create_engine(parsed.set(database=role))
        with engine.connect() as db:
            tables = sqlalchemy.inspect(db).get_table_names()
            rows = [str(r) for t in tables for r in db.execute(sqlalchemy.text(f'SELECT * FROM "{t}"'))]
        engine.dispose()
        assert rows, "the study is in the database"
        return "\n".join(rows)

    return storage, dump


@pytest.mark.slow
@pytest.mark.parametrize("storage_kind", ["journal", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_slurm_sweep_with_credentials_leaves_the_password_nowhere(tmp_path, tiny_data, storage_kind):
    """Submitted through a stub sbatch (it keeps the script and answers a job id) against a real MLflow
    server on loopback reached with credentials in the tracking URI, and (PostgreSQL) a storage URL with
    a password: neither password appears in any output, script, artifact or store."""
    from tests.conftest import clean_env, start_mlflow_server

    secret, storage_secret = "Zq7pW9xsecret", "Kd3vR8ysecret"
    if storage_kind == "journal":
        storage, dump_storage = f"journal:///{tmp_path / 's.journal'}", lambda: ""
    else:
        storage, dump_storage = _postgres_storage_with_password(storage_secret)
    server, port = start_mlflow_server(
        tmp_path / "server.db", tmp_path / "server-artifacts", cwd=tmp_path, env=clean_env()
    )
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "sbatch").write_text(
        f'#!/bin/bash\ncp "$2" {tmp_path}/submitted.sbatch\nenv > {tmp_path}/job.env\necho 4242\n'
    )
    (stubs / "sbatch").chmod(0o755)
    uri = f"http://alice:{secret}@127.0.0.1:{port}"
    path = study_file(tmp_path, tiny_data, pruner="none")
    proc = run_cli(
        [
            "sweep",
            "--study-file",
            path,
            "--trials",
            "2",
            "--storage",
            storage,
            "--tracking-uri",
            uri,
            "--slurm",
            "--slurm-tasks",
            "2",
        ],
        cwd=tmp_path,
        PATH=f"{stubs}:{os.environ['PATH']}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submitted SLURM job 4242" in proc.stdout
    job_env = (tmp_path / "job.env").read_text()
    assert secret in job_env  # the job gets it from its environment ...
    script = (tmp_path / "submitted.sbatch").read_text()
    assert "--tracking-uri" not in script  # ... not from the script
    for password in (secret, storage_secret):
        leaks = [
            p
            for p in tmp_path.rglob("*")
            if p.is_file() and p.name != "job.env" and password.encode() in p.read_bytes()
        ]
        assert not leaks and password not in proc.stdout + proc.stderr
        assert password not in dump_storage()  # the Optuna storage: study attributes, every row
    if storage_kind == "postgresql":  # a storage URL with a password travels the same way
        assert storage_secret in job_env and '--storage "${CVSTUDY_STORAGE}"' in script
    server.terminate()


@pytest.mark.parametrize(
    "case",
    ["slurm without sbatch", "unreachable tracking server", "bad storage with a password", "unloadable weights"],
)
@pytest.mark.slow
def test_what_can_fail_is_checked_before_anything_exists(tmp_path, tiny_data, case):
    path = study_file(tmp_path, tiny_data)
    extra, env, message, code = [], {}, "", 2
    if case == "slurm without sbatch":
        extra, env, message = ["--slurm"], {"PATH": str(Path(os.sys.executable).parent)}, "sbatch not found"
    elif case == "unreachable tracking server":
        extra, message, code = ["--tracking-uri", "http://127.0.0.1:9"], "does not answer", 3  # a server, not input
    elif case == "bad storage with a password":
        extra, message, code = ["--storage", "postgresql://u:pw5ecret@127.0.0.1:9/optuna"], "cannot open", 3
    else:
        bad = tmp_path / "bad.pth"
        bad.write_bytes(b"not a checkpoint")
        extra, message = ["--set", f"weights={bad}"], "unreadable weights file"
    proc = run_cli(["sweep", "--study-file", path, "--trials", "1", *extra], cwd=tmp_path, **env)
    assert proc.returncode == code and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "pw5ecret" not in proc.stdout + proc.stderr
    assert not [p for p in tmp_path.iterdir() if p.name not in ("data", "tiny.yaml", "bad.pth")]  # nothing created
