"""A facekit run on Kaggle: the script kernel `facekit kaggle run` pushes (kit/kaggle/kernels.py fills in CONFIG).

It finds the facekit bundle among the kernel's inputs (/kaggle/input/*/facekit-bundle.json), checks that it
is the very content the kernel was pushed for, installs it offline (the bundle's install.py, which also
puts the project's folds into /kaggle/working/folds/), then runs each facekit command in /kaggle/working.
Afterwards the image cache (.cache/) and, unless asked to keep them, the checkpoints (*.pt) are removed:
the output is what the runs need to be blended and submitted. A failing command fails the kernel.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFIG: dict = {"bundle": "", "content_sha256": "", "commands": [], "keep_checkpoints": False}


def say(message: str) -> None:
    print(f"[facekit kernel] {message}", flush=True)


def find_bundle(inputs: Path) -> Path:
    seen = []
    for depth in ("*", "*/*", "*/*/*"):
        for manifest in sorted(inputs.glob(f"{depth}/facekit-bundle.json")):
            content = json.loads(manifest.read_text())
            seen.append(f"{manifest.parent} ({content.get('dataset')}, {content.get('content_sha256', '')[:12]})")
            if content.get("dataset") != CONFIG["bundle"]:
                continue
            if content.get("content_sha256") != CONFIG["content_sha256"]:
                raise SystemExit(
                    f"the attached {CONFIG['bundle']} holds content {content.get('content_sha256', '')[:12]}, but this "
                    f"kernel was pushed for {CONFIG['content_sha256'][:12]}: Kaggle attached another version of the "
                    "bundle (is the new one still being processed?). Push the kernel again when it is ready.")
            return manifest.parent
    raise SystemExit(f"the facekit bundle {CONFIG['bundle']} is not among the inputs under {inputs} (found: "
                     f"{', '.join(seen) or 'no bundle'}); add it as an input")


def tidy(working: Path) -> None:
    shutil.rmtree(working / ".cache", ignore_errors=True)
    if not CONFIG["keep_checkpoints"]:
        for checkpoint in (working / "runs").rglob("*.pt"):
            checkpoint.unlink()


def main() -> int:
    kaggle = Path(os.environ.get("FACEKIT_KAGGLE_ROOT") or "/kaggle")
    working = kaggle / "working"
    bundle = find_bundle(kaggle / "input")
    say(f"installing facekit from {bundle}")
    installed = subprocess.run([sys.executable, str(bundle / "install.py")])
    if installed.returncode != 0:
        raise SystemExit(f"installing the bundle from {bundle} failed (exit code {installed.returncode})")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        for command in CONFIG["commands"]:
            say("facekit " + " ".join(command))
            done = subprocess.run([sys.executable, "-m", "kit", *command], cwd=working, env=env)
            if done.returncode != 0:
                raise SystemExit(f"facekit {' '.join(command)} failed with exit code {done.returncode}")
    finally:
        tidy(working)
    say("done")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
