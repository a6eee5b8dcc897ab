"""Rebuild examples/explorer.png, the README's picture of the explorer page: the quickstart command
with --html, opened in headless Chromium (Debian's chromium and chromium-driver, driven by Selenium),
the viewer zoomed 3x into the cat's left eye.

    python examples/make_explorer_screenshot.py [--out examples/explorer.png]
"""

import argparse
import io
import tempfile
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from posterior_jpeg.commands.sample import main as sample

HERE = Path(__file__).parent
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,720")
EYE = (0.44, 0.36)  # the point to zoom into, as fractions of the view's width and height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "explorer.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        code = sample([str(HERE / "chelsea_q10.jpg"), "-n", "4", "-o", str(out), "--sample-mean", "--std", "--html", "--quiet"])
        if code:
            raise SystemExit(f"sampling failed with exit status {code}")
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in (*FLAGS, f"--user-data-dir={Path(folder) / 'profile'}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.get((out / "index.html").as_uri())
            driver.execute_script("document.querySelector('.card [data-sample=\"1\"]').click()")
            driver.execute_script(
                "const f = document.querySelector('#viewer [data-kind=sample] .frame'), r = f.getBoundingClientRect();"
                "f.dispatchEvent(new WheelEvent('wheel', {deltaY: -550, clientX: r.left + r.width * arguments[0],"
                " clientY: r.top + r.height * arguments[1], bubbles: true, cancelable: true}))", *EYE)
            screenshot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        finally:
            driver.quit()
    screenshot.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
