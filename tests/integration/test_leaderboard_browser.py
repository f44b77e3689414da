"""The leaderboard link in a real browser: a scaled-down `harness run suite=tiny`, a real `mlflow server` on
loopback over the store the run wrote, and headless Chromium (Debian's chromium + chromium-driver, driven by
selenium) opening the link `publish_leaderboard` returns (and that the CLI prints, where it does).

The oracle is reports/tiny.md as the run wrote it: the page must show one row per algorithm (the sft baseline
included), ordered by the report's headline means, each showing the report's headline text and a number that
rounds to the report's mean. A second run that changes DPO's beta must leave one row per configuration.
The screenshot is saved in the test's tmp folder and copied to reports/leaderboard.png (path printed).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import SCALED_DOWN_TINY, run_harness
from prepared import with_prepared_stages

from harness import record

SUITE = "tiny"
ALGORITHMS = ("dpo", "grpo")
REPO = Path(__file__).resolve().parents[2]
SERVER_START_S = 240  # the server imports MLflow's whole app: half a minute on 2 busy cores
PAGE_LOAD_S = 180
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1920,1000",
)
LEADERBOARD_PREFIX = "leaderboard: "
OPEN_PREFIX = "open it with: mlflow ui --backend-store-uri "


def _browser_missing() -> str | None:
    for binary in ("chromium", "chromedriver"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed (apt-get install -y chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_browser_missing() is not None, reason=f"no headless browser: {_browser_missing()}"),
]


# --- the run, the report, the server, the browser -----------------------------------------------


def _printed(stdout: str, prefix: str) -> str | None:
    lines = [line[len(prefix) :].strip() for line in stdout.splitlines() if line.startswith(prefix)]
    return lines[-1] if lines else None


@pytest.fixture(scope="module")
def suite_run(scaled_down_run, tmp_path_factory):
    from harness.report.leaderboard_runs import publish_leaderboard

    cwd = with_prepared_stages(scaled_down_run, tmp_path_factory.mktemp("leaderboard-run"))
    result = run_harness(cwd, *SCALED_DOWN_TINY, f"only=[{','.join(ALGORITHMS)}]")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    database = cwd / "runs" / "mlflow.db"
    uri = f"sqlite:///{database}"
    report = cwd / "reports" / f"{SUITE}.md"
    assert report.exists(), result.stdout[-2000:]
    started = time.perf_counter()
    link = publish_leaderboard(uri, SUITE)  # what `harness run` ends with; publishing again replaces the runs
    seconds = time.perf_counter() - started
    print(f"publish_leaderboard took {seconds:.1f}s")
    return {"cwd": cwd, "uri": uri, "database": database, "report": report, "link": link, "stdout": result.stdout}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(suite_run, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        suite_run["uri"],
        "--default-artifact-root",
        (suite_run["database"].parent / "artifacts").as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with open(log, "w") as output:
        # Its own process group: uvicorn's workers go down with it.
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not _healthy(base):
            assert server.poll() is None, f"mlflow server exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, (
                f"mlflow server not healthy after {SERVER_START_S}s: {log.read_text()[-2000:]}"
            )
            time.sleep(1)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    # A fresh profile: no remembered workflow switch or view from an earlier session decides what opens.
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(PAGE_LOAD_S)
    yield driver
    driver.quit()


# --- reading the page and the report ------------------------------------------------------------

# Every rendered grid row's cells by column id; the run-name column and the metric columns live in separate
# containers of the grid, joined here by the row's id (the run id) and ordered by its row index.
_READ_ROWS = """
const rows = {};
document.querySelectorAll('.ag-row[row-id]').forEach(row => {
  const id = row.getAttribute('row-id');
  rows[id] = rows[id] || {run_id: id, index: Number(row.getAttribute('row-index')), cells: {}};
  row.querySelectorAll('[role=gridcell][col-id]').forEach(cell => {
    // The run-name cell also holds its colour swatch's hidden label; the name is its link.
    const link = cell.querySelector('a');
    rows[id].cells[cell.getAttribute('col-id')] = (link || cell).innerText.trim();
  });
});
return Object.values(rows).sort((a, b) => a.index - b.index);
"""
RUN_NAME_COLUMN = "attributes.`Run Name`"


def _column(kind: str, name: str) -> str:
    return f"{kind}.`{name}`"


def _wait_for_rows(driver, expected: int, metric: str) -> list[dict]:
    """The grid's rows once `expected` of them show a run name and a value of `metric`."""
    deadline = time.monotonic() + PAGE_LOAD_S
    rows = []
    while time.monotonic() < deadline:
        rows = driver.execute_script(_READ_ROWS)
        filled = [
            row for row in rows if row["cells"].get(RUN_NAME_COLUMN) and row["cells"].get(_column("metrics", metric))
        ]
        if len(filled) >= expected and len(rows) == expected:
            time.sleep(2)  # let a late re-sort settle, then read again
            return driver.execute_script(_READ_ROWS)
        time.sleep(1)
    raise AssertionError(f"the page showed {len(rows)} rows, not {expected}, within {PAGE_LOAD_S}s: {rows}")


def _report_headline(report: Path, headline: str) -> dict[str, str]:
    """algorithm -> the headline cell of the report's "Reward and KL" table, without its bold marks."""
    lines = report.read_text(encoding="utf-8").split("### Reward and KL", 1)[1].strip().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    column = next(index for index, name in enumerate(header) if name.split(" ")[0] == headline)
    cells = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        values = [cell.strip() for cell in line.strip("|").split("|")]
        cells[values[0]] = values[column].replace("**", "")
    return cells


def _headline_mean(text: str) -> str:
    return text.split(" ")[0]  # "-1.703 ± 2.978" or "-1.703 [-2.1, -1.2]" -> "-1.703"


def _close_assistant(driver) -> None:
    """The UI opens its assistant panel beside the table; it only narrows the screenshot."""
    driver.execute_script(
        """
        const panel = [...document.querySelectorAll('div')].find(d => d.innerText && d.innerText.startsWith('MLflow Assistant'));
        const button = panel && [...panel.querySelectorAll('button')].find(b => /close/i.test(b.getAttribute('aria-label') || ''));
        if (button) button.click();
        """
    )
    time.sleep(1)


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    driver.save_screenshot(str(shot))
    copy = REPO / "reports" / name
    copy.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, copy)
    print(f"screenshot: {shot} (copied to {copy})")
    return shot


# --- the tests ----------------------------------------------------------------------------------


def test_the_printed_link_is_the_published_one(suite_run):
    link = suite_run["link"]
    assert link.url().startswith(f"http://127.0.0.1:5000/#/experiments/{link.experiment_id}/runs?")
    printed = _printed(suite_run["stdout"], LEADERBOARD_PREFIX)
    if printed is None:
        pytest.skip("this `harness run` prints no leaderboard link yet; the link came from publish_leaderboard")
    assert printed == link.url()
    assert _printed(suite_run["stdout"], OPEN_PREFIX) == suite_run["uri"]


def test_the_link_opens_one_row_per_algorithm_sorted_with_the_report_values(
    suite_run, mlflow_server, browser, tmp_path
):
    link = suite_run["link"]
    headline = link.headline_metric
    assert headline == "gold_reward"  # tiny has a programmatic gold judge
    expected = _report_headline(suite_run["report"], headline)
    assert set(expected) == {record.BASELINE, *ALGORITHMS}

    browser.get(link.url(mlflow_server))
    rows = _wait_for_rows(browser, len(expected), headline)
    _close_assistant(browser)
    _screenshot(browser, tmp_path, "leaderboard.png")

    # The runs table in model-training mode, not the GenAI pages.
    assert "/runs" in browser.current_url and "workflowType=machine_learning" in browser.current_url
    names = [row["cells"][RUN_NAME_COLUMN] for row in rows]
    assert sorted(names) == sorted(expected), names
    # Best first by the report's means (ties in the report's rounding may come in either order).
    means = [float(_headline_mean(expected[name])) for name in names]
    assert means == sorted(means, reverse=True), list(zip(names, means))
    for row, name in zip(rows, names):
        shown = row["cells"]
        assert shown[_column("tags", record.TAG_REPORTED_PREFIX + headline)] == expected[name], (name, shown)
        assert f"{float(shown[_column('metrics', headline)]):.3f}" == _headline_mean(expected[name]), (name, shown)
        for bound in (record.CI_LOW_SUFFIX, record.CI_HIGH_SUFFIX):
            assert shown[_column("metrics", headline + bound)], (name, bound, shown)
    headers = browser.execute_script(
        "return [...document.querySelectorAll('.ag-header-cell[col-id]')].map(c => c.getAttribute('col-id'))"
    )
    for name in (headline, headline + record.CI_LOW_SUFFIX, headline + record.CI_HIGH_SUFFIX):
        assert _column("metrics", name) in headers, headers

    # The report's reward-against-KL figure, logged on the leaderboard run, renders in the run's artifacts.
    figure = f"{record.LEADERBOARD_FIGURES_ARTIFACT_PATH}/{SUITE}_reward_vs_kl.png"
    browser.get(
        f"{mlflow_server}/#/experiments/{link.experiment_id}/runs/{rows[0]['run_id']}/artifacts/{figure}"
        f"?workflowType={record.WORKFLOW_TYPE_TRAINING}"
    )
    deadline = time.monotonic() + PAGE_LOAD_S
    while not browser.execute_script(_FIGURE_SHOWN, figure.rsplit("/", 1)[1]):
        assert time.monotonic() < deadline, "the reward-against-KL figure did not render in the run's artifacts"
        time.sleep(1)


# An <img> of the artifact viewer that loaded a picture (the viewer fetches it through the server).
_FIGURE_SHOWN = """
return [...document.querySelectorAll('img')].some(img => img.complete && img.naturalWidth > 600
  && (img.src.includes(arguments[0]) || img.src.startsWith('blob:') || img.src.startsWith('data:')));
"""


def test_the_suite_experiment_opens_on_its_cells_best_first(suite_run, mlflow_server, browser):
    """The companion link: experiment harness/tiny on its runs table, one flat row per cell (no invocation
    rows), ordered by the cells' own gold reward as MLflow holds it."""
    import mlflow

    link = suite_run["link"]
    metric = record.EVAL_PREFIX + link.headline_metric
    client = mlflow.MlflowClient(tracking_uri=suite_run["uri"])
    cells = client.search_runs(
        [link.suite_experiment_id], filter_string=f"tags.`{record.TAG_KIND}` = '{record.KIND_CELL}'"
    )
    browser.get("about:blank")
    browser.get(link.cells_url(mlflow_server))
    rows = _wait_for_rows(browser, len(cells), metric)
    assert "/runs" in browser.current_url and "workflowType=machine_learning" in browser.current_url
    assert sorted(row["run_id"] for row in rows) == sorted(run.info.run_id for run in cells)
    stored = {run.info.run_id: run.data.metrics[metric] for run in cells}
    shown = [float(row["cells"][_column("metrics", metric)]) for row in rows]
    assert shown == [stored[row["run_id"]] for row in rows] and shown == sorted(shown, reverse=True), shown


def test_a_rerun_with_a_changed_setting_leaves_one_row_per_configuration(suite_run, mlflow_server, browser, tmp_path):
    """DPO again with another beta: a new configuration beside the old one, every other row once."""
    import mlflow

    from harness.report.leaderboard_runs import publish_leaderboard

    result = run_harness(suite_run["cwd"], *SCALED_DOWN_TINY, "only=[dpo]", "algorithms.dpo.beta=0.3")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    link = publish_leaderboard(suite_run["uri"], SUITE)
    client = mlflow.MlflowClient(tracking_uri=suite_run["uri"])
    runs = client.search_runs(
        [link.experiment_id], filter_string=f"tags.`{record.TAG_KIND}` = '{record.KIND_LEADERBOARD}'"
    )
    keys = sorted(run.data.tags[record.TAG_LEADERBOARD_KEY] for run in runs)
    assert len(keys) == len(set(keys)) == 4, keys
    betas = sorted(run.data.params.get("algorithms.dpo.beta") for run in runs if run.data.tags[record.TAG_ARM] == "dpo")
    assert betas == ["0.1", "0.3"]

    # A full load: the page keeps a shared view it has loaded once, and this tab showed it before.
    browser.get("about:blank")
    browser.get(link.url(mlflow_server))
    rows = _wait_for_rows(browser, 4, link.headline_metric)
    beta = _column("params", "algorithms.dpo.beta")
    shown = {row["cells"][RUN_NAME_COLUMN]: row["cells"].get(beta) for row in rows}
    old_name = next(name for name in shown if name.startswith("dpo (config "))
    assert sorted(shown) == sorted(["dpo", old_name, "grpo", "sft"]), shown
    # The beta that tells the two dpo rows apart is shown beside them.
    assert (shown["dpo"], shown[old_name]) == ("0.3", "0.1"), shown
    _close_assistant(browser)
    _screenshot(browser, tmp_path, "leaderboard_two_configs.png")
