"""Headless Chromium for the browser tests: Debian's package, installed when missing (as root, the CI's case)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from recsys_core.system_packages import apt_install

HINT = "apt-get install -y chromium (Debian's package; .ci/run installs it through the tests)"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        apt_install("chromium", HINT)
        found = shutil.which("chromium")
    assert found, f"chromium is not on PATH after installing it: {HINT}"
    return found


def screenshot(url: str, out: Path, width: int = 1200, height: int = 3600) -> np.ndarray:
    """The page as Chromium draws it (RGB array), after its scripts ran (20 s of virtual time at most)."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--window-size={width},{height}", "--virtual-time-budget=20000", f"--screenshot={out}", url]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and out.exists(), done.stderr[-2000:]
    return np.asarray(Image.open(out).convert("RGB"))


def pixels_near(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    """How many pixels have about this colour."""
    return int((np.abs(image.astype(int) - np.array(rgb)).max(axis=2) <= tolerance).sum())


def page_dom(url: str, width: int = 1600, height: int = 1000) -> str:
    """The page's DOM as Chromium leaves it after its scripts ran (20 s of virtual time at most)."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}",
           "--virtual-time-budget=20000", "--dump-dom", url]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
