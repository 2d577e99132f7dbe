"""The learner's path, in a real browser: JupyterLab started on 127.0.0.1 by the test,
driven by Playwright in Debian's Chromium.

For notebooks 05 (masking), 14 (the chat model, at its CPU scale) and 07 (the
encoder-decoder, at its CPU scale, trained for
200 steps instead of 700 through ``COURSE_STEPS``; ``COURSE_BROWSER_STEPS=full`` runs it
as is, about 110 s more on two quiet cores) the test opens a
copy of the notebook (outputs cleared, so everything seen comes from this run), clicks
Kernel > Restart Kernel and Run All Cells, waits until every code cell has run and the
kernel is idle, and then checks what a learner sees:

- no cell shows an error (in the page, and in the notebook saved from the page);
- the masked-attention plot (05) and the cross-attention plot (07) are images in the page;
- every ``saved /path/...`` line the notebook printed names files that exist;
- a screenshot of the notebook's first plot lands in ``exports/browser/NN_name.png``;
- in 14, a message typed into the chat box (Enter) gets a reply in the conversation below it.

A third test opens a small page of its own with ``course_lib.demos.sampling_demo`` on a tiny
untrained GPT, moves the temperature slider with the keyboard and sees the plot change.

How to wait follows JupyterLab's own UI tests (galata): the kernel's status in the status
bar, the execution prompts of the cells, and the rendered outputs, each polled in the page.

Needs Chromium at /usr/bin/chromium (``apt-get install chromium``; ``COURSE_CHROMIUM``
names another binary) and ``pip install playwright`` (no ``playwright install``: the
browser comes from Debian). Without them every test here skips with the reason.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("COURSE_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("COURSE_SCREENSHOT_DIR", ROOT / "exports" / "browser"))

REQUIRED = os.environ.get("COURSE_REQUIRE_BROWSER") == "1"  # CI: a missing piece fails, not skips


def _missing(reason: str) -> None:
    if REQUIRED:
        raise RuntimeError(f"COURSE_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason, allow_module_level=True)


if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
    _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set COURSE_CHROMIUM)")
try:
    from playwright.sync_api import sync_playwright
except ImportError:
    _missing("playwright is not installed (pip install playwright)")
try:
    import ipywidgets  # noqa: F401
    import jupyterlab  # noqa: F401
except ImportError:
    _missing("jupyterlab or ipywidgets is not installed (pip install -r requirements.txt)")

TOKEN = "course-browser-test"
BROWSER_STEPS = os.environ.get("COURSE_BROWSER_STEPS", "200")  # notebook 07's training steps here
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"
CHROMIUM_ARGS = ["--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--disable-sync", "--disable-gpu", "--disable-dev-shm-usage"]
# user settings: no news/update pop-up over the page; every cell kept in the page (no windowing)
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _strip_outputs(src: Path, dst: Path) -> None:
    nb = json.loads(src.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    dst.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


class Lab:
    """A JupyterLab server of the test's own: temp config, data, runtime and work folders."""

    def __init__(self, tmp: Path):
        self.tmp, self.work, self.exports = tmp, tmp / "work", tmp / "exports"
        self.work.mkdir()
        for rel, value in SETTINGS.items():
            path = tmp / "settings" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "MPLBACKEND"))}
        env.update(
            JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_DATA_DIR=str(tmp / "data"),
            JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), IPYTHONDIR=str(tmp / "ipython"),
            MPLCONFIGDIR=str(tmp / "mpl"), JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"),
            JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
            PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            COURSE_EXPORT_DIR=str(self.exports), COURSE_DEVICE="cpu", TQDM_DISABLE="1",
            HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONHASHSEED="0",
            OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
            # notebook 07 trains for COURSE_STEPS steps (course_lib.env.train_steps) instead of
            # 700: the page is what is tested, not the translator; "full" runs it as is
            COURSE_STEPS="" if BROWSER_STEPS == "full" else BROWSER_STEPS,
        )
        self.log = open(tmp / "jupyterlab.log", "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
             f"--port={self.port}", f"--IdentityProvider.token={TOKEN}",
             f"--ServerApp.root_dir={self.work}", "--ServerApp.port_retries=0"],
            cwd=self.work, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={TOKEN}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"JupyterLab did not start: {self.server_log()[-2000:]}")
            time.sleep(0.5)

    def server_log(self) -> str:
        self.log.flush()
        return (self.tmp / "jupyterlab.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # the server shuts its kernels down
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    server = Lab(tmp_path_factory.mktemp("lab"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


# ------------------------------------------------------------------ the page, as galata reads it

STATE_JS = """(panel) => {
  const root = document.querySelector(panel);
  if (!root) return null;
  const cells = [...root.querySelectorAll('.jp-Cell.jp-CodeCell')].map(c => ({
    prompt: (c.querySelector('.jp-InputPrompt')?.textContent || '').trim(),
    source: c.querySelector('.jp-InputArea-editor')?.textContent || '',
    stderr: [...c.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
              .map(e => e.textContent),
    text: [...c.querySelectorAll('.jp-OutputArea-output')].map(e => e.textContent).join('\\n'),
    images: [...c.querySelectorAll('.jp-OutputArea-output img')]
              .filter(i => i.src.startsWith('data:image/png') && i.complete && i.naturalWidth > 0).length,
  }));
  const status = document.querySelector('#jp-main-statusbar')?.textContent || '';
  return {cells, status};
}"""

ERROR = re.compile(r"Traceback|\b[A-Za-z]*Error\b")


def page_state(page) -> dict:
    return page.evaluate(STATE_JS, PANEL)


def wait_for(page, predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    """Poll the page until ``predicate(state)`` is truthy; fail with the last state."""
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        state = page_state(page)
        if state is not None:
            result = predicate(state)
            if result:
                return state
        time.sleep(poll_s)
    summary = None if state is None else {"status": state["status"][-200:],
                                          "prompts": [c["prompt"] for c in state["cells"]]}
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}; last state: {summary}")


def kernel_idle(state) -> bool:
    status = state["status"]
    return "| Idle" in status and "No Kernel" not in status and "Connecting" not in status


def open_notebook(page, lab: Lab, name: str, wait_for_kernel_s: float = 120) -> None:
    page.goto(f"{lab.url}/lab/tree/{name}?token={TOKEN}&reset")
    page.wait_for_selector(f"{PANEL} .jp-Cell")
    # the toolbar reads idle before a kernel is attached: wait for "<kernel> | Idle"
    wait_for(page, kernel_idle, wait_for_kernel_s, "the kernel to start")


def restart_and_run_all(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Kernel$")).click()
    page.locator(".lm-Menu-itemLabel", has_text="Restart Kernel and Run All Cells").click()
    page.locator(".jp-Dialog .jp-mod-accept").click()  # "Restart"


def run_all(page, lab: Lab, name: str, timeout_s: float, source: Path | None = None) -> tuple[dict, float]:
    """Open a copy of ``name`` (from notebooks/, or ``source``) with its outputs cleared,
    Restart Kernel and Run All Cells, wait until every code cell ran (or one failed) and the
    kernel is idle."""
    _strip_outputs(source or ROOT / "notebooks" / name, lab.work / name)
    open_notebook(page, lab, name)
    start = time.monotonic()
    restart_and_run_all(page)
    numbered = re.compile(r"^\[\d+\]:$")

    def finished(state):
        cells = state["cells"]
        if any(ERROR.search(e) for c in cells for e in c["stderr"]):
            return not any(c["prompt"] == "[*]:" for c in cells)  # Run All stopped there
        return cells and all(numbered.match(c["prompt"]) for c in cells) and kernel_idle(state)

    state = wait_for(page, finished, timeout_s, f"{name} to run", poll_s=1.0)
    return state, time.monotonic() - start


def shut_down_kernels(lab: Lab) -> None:
    """Stop every kernel of the server (a finished notebook's kernel must not use the CPU)."""
    with urllib.request.urlopen(f"{lab.url}/api/kernels?token={TOKEN}", timeout=10) as r:
        kernels = json.load(r)
    for k in kernels:
        req = urllib.request.Request(f"{lab.url}/api/kernels/{k['id']}?token={TOKEN}", method="DELETE")
        urllib.request.urlopen(req, timeout=30).close()


def save_and_read(page, lab: Lab, name: str) -> dict:
    """Save the notebook from the page (Ctrl+S) and read what JupyterLab wrote to disk."""
    path = lab.work / name
    before = path.stat().st_mtime_ns
    page.locator(f"{PANEL} .jp-Notebook").click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + 30
    while path.stat().st_mtime_ns == before and time.monotonic() < deadline:
        time.sleep(0.2)
    return json.loads(path.read_text(encoding="utf-8"))


SAVED = re.compile(r"saved (\S+?)(?:\.\{([a-z,]+)\}|\.(png|svg|pdf))(?=\s|$)")


def saved_files(text: str, base: Path) -> list[Path]:
    """The files of each ``saved PATH`` line; a relative PATH is read from ``base``, the
    notebook's folder (where the kernel runs)."""
    files = []
    for stem, many, one in SAVED.findall(text):
        files += [Path(os.path.normpath(base / f"{stem}.{ext}")) for ext in (many.split(",") if many else [one])]
    return files


def check_learner_view(page, lab: Lab, name: str, state: dict, plot_marker: str) -> dict:
    cells = state["cells"]
    errors = [(c["prompt"], e[-600:]) for c in cells for e in c["stderr"] if ERROR.search(e)]
    assert not errors, f"{name}: error output in the page: {errors}"
    counts = [int(c["prompt"][1:-2]) for c in cells]
    assert counts == list(range(1, len(cells) + 1)), f"{name}: cells ran out of order: {counts}"
    # the plot the issue names is an image in the page, in the cell that draws it
    plot_cells = [c for c in cells if plot_marker in c["source"]]
    assert plot_cells, f"{name}: no cell contains {plot_marker!r}"
    assert all(c["images"] >= 1 for c in plot_cells), f"{name}: the {plot_marker} plot is not in the page"
    # every export printed names files that exist, where the notebook said
    printed = saved_files("\n".join(c["text"] for c in cells), lab.work)
    assert printed, f"{name}: no cell printed where it saved its plots"
    missing = [p for p in printed if not (p.is_file() and p.stat().st_size > 0)]
    assert not missing, f"{name}: printed but not written: {missing}"
    assert all(lab.exports in p.parents for p in printed), f"{name}: exports outside {lab.exports}"
    assert any(plot_marker.split('"')[1] in p.name for p in printed)
    # the notebook as JupyterLab saves it: no error output anywhere
    nb = save_and_read(page, lab, name)
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert outputs and not [o for o in outputs if o["output_type"] == "error"], f"{name}: error in saved notebook"
    # screenshots, as the learner sees them: the first plot's cell, and the plot checked above
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    stem = Path(name).stem
    with_plot = page.locator(f"{PANEL} .jp-Cell.jp-CodeCell").filter(has=page.locator(".jp-OutputArea-output img"))
    shot = SCREENSHOTS / f"{stem}.png"
    with_plot.first.screenshot(path=str(shot))
    with_plot.filter(has_text=plot_marker).first.screenshot(path=str(SCREENSHOTS / f"{stem}_{plot_marker.split(chr(34))[1]}.png"))
    assert shot.stat().st_size > 1000
    return {"printed": printed, "screenshot": shot}


ZIPPED = re.compile(r"zipped (\d+) files -> (\S+\.zip)")


def check_download(state: dict, plot_name: str, base: Path) -> None:
    """download_exports printed where its zip is; the zip holds the plot."""
    import zipfile

    found = ZIPPED.findall("\n".join(c["text"] for c in state["cells"]))
    assert len(found) == 1, "no 'zipped N files -> PATH' line"
    n, path = int(found[0][0]), base / found[0][1]
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    assert len(names) == n and any(name.endswith(f"/{plot_name}.png") for name in names)


def test_05_masking_in_jupyterlab(lab, page):
    state, seconds = run_all(page, lab, "05_masking.ipynb", timeout_s=180)
    check_learner_view(page, lab, "05_masking.ipynb", state, 'EXPORT / "masked_scores"')
    shut_down_kernels(lab)
    print(f"05_masking: Restart Kernel and Run All Cells took {seconds:.1f} s")


def test_07_encoder_decoder_in_jupyterlab(lab, page):
    state, seconds = run_all(page, lab, "07_encoder_decoder.ipynb", timeout_s=900)
    check_learner_view(page, lab, "07_encoder_decoder.ipynb", state, 'EXPORT / "cross_attention"')
    check_download(state, "cross_attention", lab.work)
    trained = [c["text"] for c in state["cells"] if "losses = train_loop(model," in c["source"]]
    steps = 700 if BROWSER_STEPS == "full" else int(BROWSER_STEPS)
    assert trained and f"{steps} steps" in trained[0], trained  # COURSE_STEPS reached the kernel
    # the translation demo is live: a new sentence (Enter) redraws its map
    demo = page.locator(f"{PANEL} .jp-Cell.jp-CodeCell").filter(has=page.locator(".widget-text input"))
    assert demo.count() == 1, "07's translation demo did not come up as a widget in JupyterLab"
    before = demo.locator(".widget-output img").first.get_attribute("src")
    box = demo.locator(".widget-text input").first
    box.fill("the small girl sees my friend .")
    box.press("Enter")
    redrawn = """([sel, old]) => {
      const out = document.querySelector(sel); const img = out && out.querySelector('img');
      return !!img && img.complete && img.naturalWidth > 0 && img.src !== old
             && out.textContent.includes('the small girl sees my friend .');
    }"""
    page.wait_for_function(redrawn, arg=[f"{PANEL} .widget-output", before], timeout=60_000)
    wait_for(page, kernel_idle, 60, "the demo to finish")
    page.wait_for_function(redrawn, arg=[f"{PANEL} .widget-output", before], timeout=30_000)
    demo.locator(".widget-output img").first.scroll_into_view_if_needed()
    page.evaluate("(sel) => document.querySelector(sel).decode()", f"{PANEL} .widget-output img")
    demo.locator(".jp-OutputArea").first.screenshot(path=str(SCREENSHOTS / "translation_demo.png"))
    shut_down_kernels(lab)
    print(f"07_encoder_decoder: Restart Kernel and Run All Cells took {seconds:.1f} s")


def test_14_chat_in_jupyterlab(lab, page):
    """Notebook 14 runs at its CPU scale; then a message typed into its chat box (Enter) gets
    a reply streamed into the conversation below it."""
    name = "14_chat_model.ipynb"
    state, seconds = run_all(page, lab, name, timeout_s=900)
    check_learner_view(page, lab, name, state, 'EXPORT / "dpo_reward_margin"')
    chat = page.locator(f"{PANEL} .jp-Cell.jp-CodeCell").filter(has=page.locator(".course-chat-input"))
    assert chat.count() == 1, "14's chat did not come up as a widget in JupyterLab"
    box = chat.locator(".course-chat-input input").first
    box.fill("count: cat dog sun")
    box.press("Enter")
    replied = r"""(sel) => {
      const log = document.querySelector(sel);
      return !!log && /you> count: cat dog sun\s*model> \S/.test(log.textContent);
    }"""
    log_sel = f"{PANEL} .course-chat-log"
    page.wait_for_function(replied, arg=log_sel, timeout=60_000)
    wait_for(page, kernel_idle, 60, "the reply to finish")
    text = chat.locator(".course-chat-log").first.inner_text()
    assert re.search(r"you> count: cat dog sun\s*model> \S", text), text
    assert box.input_value() == "", "the message box was not cleared after sending"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    chat.locator(".jp-OutputArea").first.screenshot(path=str(SCREENSHOTS / "chat_demo.png"))
    shut_down_kernels(lab)
    print(f"14_chat_model: Restart Kernel and Run All Cells took {seconds:.1f} s; the chat replied: {text!r}")


def _notebook(sources: list[str]) -> dict:
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
                       "outputs": [], "source": src} for i, src in enumerate(sources)],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


def test_a_failing_cell_is_caught(lab, page, tmp_path):
    """The checks are not vacuous: a notebook whose second cell raises fails them (and Run
    All stops there, which the wait must notice instead of timing out)."""
    broken = tmp_path / "broken.ipynb"
    broken.write_text(json.dumps(_notebook([
        "from course_lib.plotting import heatmap, save_figure\nfrom course_lib.env import export_dir\n"
        "save_figure(heatmap([[0.5, 0.5], [1.0, 0.0]]), export_dir('broken') / 'masked_scores')",
        "1 / 0", "print('never runs')"])))
    state, seconds = run_all(page, lab, "broken.ipynb", timeout_s=120, source=broken)
    assert seconds < 100
    assert [c["prompt"] for c in state["cells"]][:2] == ["[1]:", "[2]:"]
    with pytest.raises(AssertionError, match="error output in the page.*ZeroDivisionError"):
        check_learner_view(page, lab, "broken.ipynb", state, 'export_dir(\'broken\') / \'masked_scores\'')
    shut_down_kernels(lab)


def test_saved_lines_are_read_as_files():
    text = "saved ../exports/b/c.{png,svg,pdf}\nsaved /x/y.png\nsaved names_only\n"
    assert saved_files(text, Path("/a/work")) == [
        Path("/a/exports/b/c.png"), Path("/a/exports/b/c.svg"), Path("/a/exports/b/c.pdf"), Path("/x/y.png")]


DEMO_PAGE = '''import torch

from course_lib.demos import sampling_demo
from course_lib.gpt import GPT, GPTConfig
from course_lib.tokenizer import CharTokenizer

tok = CharTokenizer.from_text("the quick brown fox jumps over the lazy dog")
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layers=1, n_heads=2, d_model=32))
with torch.no_grad():
    model.out_proj.weight.mul_(4)  # a peaked distribution, so the temperature shows
ui = sampling_demo(model, tok, "the ", new_tokens=20)
'''


def test_demo_slider_redraws_the_plot(lab, page):
    """A page of its own (not a course notebook): sampling_demo on a tiny untrained GPT.
    In JupyterLab the demo must come up interactive; moving the temperature slider with
    the keyboard must change the plot and the printed settings."""
    (lab.work / "demo.ipynb").write_text(json.dumps(_notebook([DEMO_PAGE])), encoding="utf-8")
    open_notebook(page, lab, "demo.ipynb")
    restart_and_run_all(page)
    plot = page.locator(f"{PANEL} .widget-output img")
    plot.first.wait_for(timeout=120_000)
    before = plot.first.get_attribute("src")
    text_before = page.locator(f"{PANEL} .widget-output").first.inner_text()
    assert "temperature 1.00" in text_before
    handle = page.locator(f"{PANEL} .widget-slider .noUi-handle").first
    handle.focus()
    for _ in range(10):  # 10 steps of 0.05: temperature 1.00 -> 0.50
        page.keyboard.press("ArrowLeft")
    # each key press is one change (continuous_update=False): wait for the last one's redraw
    redrawn = """([sel, old]) => {
      const out = document.querySelector(sel);
      const img = out && out.querySelector('img');
      return !!img && img.complete && img.naturalWidth > 0 && img.src !== old
             && out.textContent.includes('temperature 0.50');
    }"""
    page.wait_for_function(redrawn, arg=[f"{PANEL} .widget-output", before], timeout=60_000)
    wait_for(page, kernel_idle, 60, "the kernel to finish redrawing")
    page.wait_for_function(redrawn, arg=[f"{PANEL} .widget-output", before], timeout=30_000)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.locator(f"{PANEL} .jp-Cell.jp-CodeCell .jp-OutputArea").first.screenshot(
        path=str(SCREENSHOTS / "sampling_demo.png"))
    shut_down_kernels(lab)


def test_server_log_has_no_kernel_errors(lab):
    # runs last in this file: a kernel that died or failed to start shows up here
    log = lab.server_log()
    assert "KernelRestarter: restarting kernel" not in log, log[-2000:]
    assert not re.search(r"\[E [^\]]*\].*kernel", log, re.IGNORECASE), log[-2000:]
