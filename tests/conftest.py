"""Shared test fixtures: synthetic natural-looking images and their JPEG encodings (no files in the repo)."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jpeglib
import numpy as np
import pytest
from PIL import Image

from posterior_jpeg.atomic import FolderLock


def _natural_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [height, width, 3]: smooth gradients and a low-frequency wave, a sharp edge, plus noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    y /= max(height - 1, 1)
    x /= max(width - 1, 1)
    wave = np.sin(6.0 * x + 1.0 + rng.uniform(0, 3)) * np.cos(4.0 * y + rng.uniform(0, 3))
    edge = np.where(x + 0.5 * y > 0.6, 40.0, -40.0)
    planes = [
        120 + 80 * wave + 0.5 * edge,
        60 + 150 * (0.6 * x + 0.4 * y),
        200 - 120 * y + 30 * wave - 0.5 * edge,
    ]
    image = np.stack(planes, axis=-1) + rng.normal(0.0, 10.0, (height, width, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def natural_rgb():
    """Factory natural_rgb(height, width, seed=0) -> uint8 RGB array [height, width, 3].

    Deterministic for a given seed; smooth enough to compress like a photo, textured enough that
    every DCT band carries some energy."""
    return _natural_rgb


@pytest.fixture(scope="session")
def pillow_jpeg():
    """Factory pillow_jpeg(array_or_image, **save_options) -> bytes of the JPEG Pillow writes.

    save_options go to Image.save (quality, subsampling, progressive, exif, icc_profile, ...);
    an array is wrapped with Image.fromarray first (uint8 [H, W, 3] -> RGB, [H, W] -> L)."""

    def encode(image, **save_options) -> bytes:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", **save_options)
        return buffer.getvalue()

    return encode


# Values no key of its type accepts: every numeric key's range starts at 0 or above, every list
# needs at least one valid element, every string key is a choice (or a path, left out here).
WRONG = {
    int: ["-1", "nan", "inf", "1.5", "abc", "[1]", "{a: 1}", "-99999999999999999999"],
    float: ["-1", "nan", "inf", "-inf", ".nan", "abc", "[1]", "{a: 1}", "-1e400"],
    str: ["bogus", "[1]", "{a: 1}"],
    list: ["[]", "abc", "[nan, nan]", "[2, 2]", "['4:1:1']", "{a: 1}"],
}


@pytest.fixture
def wrong_overrides():
    """Factory wrong_overrides(rules, defaults, count) -> `count` key=value overrides drawn at random
    (fixed seed): a key of `rules` and a value of the wrong type, range or finiteness for the type
    of its value in `defaults` (a config node that gives every checked key a value)."""
    import random

    from omegaconf import OmegaConf

    def draw(rules: dict, defaults, count: int, seed: int = 0) -> list[str]:
        kinds = {key: type(OmegaConf.to_container(value) if OmegaConf.is_list(value) else value)
                 for key in rules for value in [OmegaConf.select(defaults, key)]}
        rng = random.Random(seed)
        keys = sorted(kinds)
        return [f"{key}={rng.choice(WRONG[kinds[key]])}" for key in (rng.choice(keys) for _ in range(count))]

    return draw


@pytest.fixture
def dead_pid():
    """Factory dead_pid() -> the pid of a process that has ended (and been reaped)."""

    def make() -> int:
        process = subprocess.Popen([sys.executable, "-c", ""])
        process.wait()
        return process.pid

    return make


# Another process holding an output folder the way FolderLock does: an flock on the lock file, its pid inside.
_HOLD_LOCK = """
import fcntl, os, sys
descriptor = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(descriptor, fcntl.LOCK_EX)
os.write(descriptor, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def hold_lock():
    """Factory hold_lock(folder) -> a process that holds the folder's lock until its stdin closes
    (or it is killed); killed at the end of the test if still running."""
    holders = []

    def start(folder) -> subprocess.Popen:
        holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(Path(folder) / FolderLock.NAME)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        holders.append(holder)
        assert holder.stdout.readline() == "locked\n"
        return holder

    yield start
    for holder in holders:
        holder.kill()
        holder.wait()


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000")


class Browser:
    """A headless Chromium driven by Selenium, with what the page tests check: console messages,
    every URL the browser requested, and whether images are shown."""

    def __init__(self, driver):
        self.driver = driver

    def load(self, path) -> None:
        self.driver.get_log("browser")  # drop what earlier pages logged
        self.driver.get_log("performance")
        self.driver.get(path.resolve().as_uri())

    def console_errors(self) -> list[str]:
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]

    def requested_urls(self) -> list[str]:
        """Every URL the browser asked for since the page was loaded, from Chrome's network events."""
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return urls

    def run(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def load_every_image(self) -> list[dict]:
        """Scroll through the page, then make lazy images load now; each image's src and naturalWidth."""
        self.run("window.scrollTo(0, document.body.scrollHeight)")
        self.run("document.querySelectorAll('img[loading=lazy]').forEach(i => { i.loading = 'eager'; })")
        return self.images("img[src]")

    def images(self, selector: str) -> list[dict]:
        """The images matched by `selector` once loaded (up to 10 s): src and naturalWidth."""
        from selenium.webdriver.support.ui import WebDriverWait

        complete = f"return [...document.querySelectorAll({selector!r})].every(i => i.complete)"
        WebDriverWait(self.driver, 10).until(lambda d: d.execute_script(complete))
        return self.run(f"return [...document.querySelectorAll({selector!r})]"
                        ".map(i => ({src: i.getAttribute('src'), width: i.naturalWidth}))")


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    """Headless Chromium (Debian's chromium and chromium-driver, which .ci/run installs); skipped
    only when they are not installed here."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver; .ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.get("about:blank")  # leave the new-tab page, whose chrome:// requests are not the tests' pages'
    yield Browser(driver)
    driver.quit()


@pytest.fixture
def libjpeg_read(capfd):
    """Factory libjpeg_read(path) -> (coefficient planes, set of lines printed): what libjpeg itself
    makes of a file through jpeglib.read_dct (it prints to file descriptor 2, captured by capfd)."""

    def read(path) -> tuple[list[np.ndarray], set[str]]:
        capfd.readouterr()
        jpeg = jpeglib.read_dct(str(path))
        planes = [jpeg.Y] + ([jpeg.Cb, jpeg.Cr] if jpeg.has_chrominance else [])
        return planes, {line.strip() for line in capfd.readouterr().err.splitlines() if line.strip()}

    return read
