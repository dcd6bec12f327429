"""End to end as a person sees it: a tiny sweep, `mlflow server` serving its runs and artifacts over its
REST API, and `cvstudy report`'s HTML rendered by headless Chromium."""

import csv
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import clean_env, run_cli, start_mlflow_server, start_server, wait_for_http
from tests.orchestrator.test_sweep import study_file

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # servers and a headless browser (make test-fast skips it)


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{binary} is not installed in CI (.ci/run installs chromium and chromium-driver)")
        pytest.skip(f"{binary} not installed (apt-get install chromium chromium-driver)")
    return path


def _get(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
        return json.loads(raw) if "json" in resp.headers.get("Content-Type", "") else raw


@pytest.fixture
def swept(tmp_path, tiny_data):
    proc = run_cli(
        ["sweep", "--study-file", study_file(tmp_path, tiny_data, pruner="none"), "--trials", "3"], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp_path


def test_mlflow_server_serves_child_runs_with_artifacts(swept):

    server, port = start_mlflow_server(swept / "mlflow.db", cwd=swept, env=clean_env())
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/health", server, what="mlflow server")
        assert b"<html" in _get(f"{base}/").lower()  # the UI itself
        exp = _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny")["experiment"]
        runs = _get(
            f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 100}
        )["runs"]
        tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
        parents = [r for r, t in zip(runs, tags) if t.get("cvstudy.role") == "study"]
        children = [r for r, t in zip(runs, tags) if "mlflow.parentRunId" in t]
        assert len(parents) == 1 and len(children) == 3
        for child in children:
            run_id = child["info"]["run_id"]
            files = {f["path"] for f in _get(f"{base}/api/2.0/mlflow/artifacts/list?run_id={run_id}")["files"]}
            assert {"confusion_matrix.png", "confusion_matrix.json"} <= files
            png = _get(f"{base}/get-artifact?path=confusion_matrix.png&run_uuid={run_id}")
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_readmes_optuna_dashboard_line_shows_the_study_and_its_objective(swept):
    """`optuna-dashboard sqlite:///optuna.db`, as the README says, from the project directory: installed
    by `make setup`, it serves the sweep's study with its three trials and names the objective. (It
    cannot report a port it chose itself, so the test picks a free one and retries if another took it.)"""
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    assert dashboard.exists(), "make setup installs optuna-dashboard (the README's browse step)"
    for _ in range(3):
        port = _free_port()
        server = subprocess.Popen(
            [dashboard, "sqlite:///optuna.db", "--port", str(port), "--server", "wsgiref"],
            cwd=swept,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_http(f"http://127.0.0.1:{port}/api/studies", server, what="optuna-dashboard", timeout=60)
        except AssertionError:
            server.kill()
            server.wait(timeout=30)
            continue
        try:
            base = f"http://127.0.0.1:{port}"
            studies = {s["study_name"]: s for s in _get(f"{base}/api/studies")["study_summaries"]}
            assert set(studies) == {"tiny"}  # no pruning companion: a single-objective study has none
            detail = _get(f"{base}/api/studies/{studies['tiny']['study_id']}")
            assert detail["objective_names"] == ["val_balanced_accuracy"] and detail["directions"] == ["maximize"]
            assert sorted(t["state"] for t in detail["trials"]) == ["Complete"] * 3
            assert b"<html" in _get(f"{base}/dashboard").lower()  # the page a person opens
            return
        finally:
            server.terminate()
            server.wait(timeout=30)
    pytest.fail("optuna-dashboard did not start on three free ports")


def test_report_html_renders_in_headless_chromium(swept):
    chromium, chromedriver = _need("chromium"), _need("chromedriver")
    proc = run_cli(["report", "tiny"], cwd=swept)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    page = swept / "reports" / "tiny" / "report.html"
    assert page.exists() and (swept / "reports" / "tiny" / "trials.csv").exists()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,2400",
        f"--user-data-dir={swept / 'chrome-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager reach for the network
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.get(page.as_uri())
        assert "cvstudy report" in driver.title
        images = driver.execute_script(
            "return [...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.src.slice(0, 22)])"
        )
        assert len(images) >= 4, images
        broken = [alt for alt, complete, width, _ in images if not complete or width == 0]
        assert not broken, f"images that did not load: {broken}"
        assert all(src.startswith("data:image/png;base64") for *_, src in images)  # self-contained
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        text = driver.find_element("tag name", "body").text
        assert "Leaderboard" in text and "Results by model, pretrained and augmentation" in text
        # the page shows the trials and their numbers: every complete trial's run, the best one's test metric
        rows = list(csv.DictReader(open(swept / "reports" / "tiny" / "trials.csv")))
        complete = [r for r in rows if r["state"] == "COMPLETE"]
        assert complete and all(r["mlflow_run_id"] in text for r in complete)
        best = max(complete, key=lambda r: float(r["objective"]))
        assert f"{float(best['objective']):.4f}" in text
        # with its interval over the test images, to the decimals the interval supports
        value, low, high = (float(best[f"test_balanced_accuracy{end}"]) for end in ("", "_ci_low", "_ci_high"))
        assert any(f"{value:.{d}f} [{low:.{d}f}, {high:.{d}f}]" in text for d in range(2, 7)), text
        shot = swept / "reports" / "tiny" / "screenshot.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        keep = os.environ.get("CVSTUDY_KEEP_SCREENSHOT")
        if keep:
            Path(keep).write_bytes(shot.read_bytes())
    finally:
        driver.quit()


def _chrome(profile: Path, size: str = "1600,1000"):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = _need("chromium"), _need("chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={size}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager reach for the network
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def _wait(driver, script: str, timeout: float = 90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for: {script}")


@pytest.mark.long
def test_the_link_a_sweep_prints_opens_its_trials_in_mlflow_ui(swept):
    import re

    _need("chromium")
    again = run_cli(["sweep", "--study-file", swept / "tiny.yaml", "--trials", "3"], cwd=swept)
    assert again.returncode == 0, again.stdout + again.stderr
    link = re.search(r"`mlflow ui` \(from this directory, no flags\), then open (\S+)", again.stdout).group(1)
    assert link.startswith("http://127.0.0.1:5000/#/experiments/") and "workflowType=machine_learning" in link
    # `mlflow ui` as printed, on a free port instead of 5000
    server, port = start_server(
        [str(Path(sys.executable).parent / "mlflow"), "ui", "--port", "0"], cwd=swept, env=clean_env(), what="mlflow ui"
    )
    base = f"http://127.0.0.1:{port}"
    driver = None
    try:
        wait_for_http(f"{base}/health", server, what="mlflow ui")
        driver = _chrome(swept / "chrome-ui")
        driver.get(link.replace("http://127.0.0.1:5000", base))
        # the first chart a person sees: the objective's curves over epochs, one line per trial, in the
        # first screen (the cards fill in after the runs table: wait for the first one to name its runs)
        first = _wait(
            driver,
            "const c = document.querySelector('[data-testid=\"experiment-view-compare-runs-card\"]');"
            "if (!c || !c.innerText.includes('trial-002')) return null; const r = c.getBoundingClientRect();"
            "return {text: c.innerText, top: r.top, bottom: r.bottom, screen: window.innerHeight,"
            " body: document.body.innerText}",
        )
        text = first["body"]
        assert first["text"].split("\n")[0] == "val/balanced_accuracy", first["text"][:300]
        assert 0 <= first["top"] < first["bottom"] <= first["screen"], first
        legend = re.findall(r"(trial-\d+) \(val/balanced_accuracy\)", first["text"])
        assert "Model training" in text and "cvstudy: trials, best first by val_balanced_accuracy" in text
        assert "study-tiny" not in text  # the trials themselves, not one collapsed parent row
        # every trial's curve, best first: the order the view sorts the runs in, against MLflow's REST API
        exp_id = re.search(r"#/experiments/(\d+)/", link).group(1)
        trials = _get(
            f"{base}/api/2.0/mlflow/runs/search",
            {"experiment_ids": [exp_id], "filter": "tags.`cvstudy.role` = 'trial'", "max_results": 10},
        )["runs"]
        best = {
            r["info"]["run_name"]: next(
                m["value"] for m in r["data"]["metrics"] if m["key"] == "val/best_balanced_accuracy"
            )
            for r in trials
        }
        assert sorted(legend) == sorted(best) and len(best) == 3
        assert [best[name] for name in legend] == sorted(best.values(), reverse=True), (legend, best)
        # the sections a person scrolls through next, in order, each metric in its own
        sections = re.findall(r"^(val|test|train|cost|Model metrics)\n\((\d+)\)$", text, flags=re.M)
        assert [name for name, _ in sections][:4] == ["val", "test", "train", "cost"], sections
        shots = swept / "reports"
        shots.mkdir(exist_ok=True)
        driver.save_screenshot(str(shots / "mlflow-ui-trials.png"))
        # one trial's page: its confusion matrix image
        run_id = trials[0]["info"]["run_id"]
        driver.get(
            f"{base}/#/experiments/{exp_id}/runs/{run_id}/artifacts/confusion_matrix.png?workflowType=machine_learning"
        )
        try:  # the artifact view loads the PNG through the artifact API and shows it (a blob: URL)
            _wait(
                driver,
                "return document.body.innerText.includes('confusion_matrix.png') && "
                "[...document.images].some(i => i.complete && i.naturalWidth >= 200)",
            )
            assert "Model training" in driver.find_element("tag name", "body").text
        finally:
            driver.save_screenshot(str(shots / "mlflow-ui-confusion.png"))
        keep = os.environ.get("CVSTUDY_KEEP_SCREENSHOT")
        if keep:
            for name in ("mlflow-ui-trials.png", "mlflow-ui-confusion.png"):
                shutil.copy(shots / name, Path(keep).with_name(name))
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
