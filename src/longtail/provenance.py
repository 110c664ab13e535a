"""What a run needs recorded to be reproduced: the software it ran on and a fingerprint of its data.

`environment()` goes into every run's `run_config.json` (and its versions into the model card); with the
command and every resolved option already there, and `data_fingerprint()` of the rows each split held, a
rerun can be checked against the original: same code, same libraries, same rows.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

# The libraries whose version can change a run's numbers (scikit-learn decides the TF-IDF and probe heads,
# numpy/scipy the metrics and temperature, torch/transformers/tokenizers the encoders). Absent ones are left out.
PACKAGES = (
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "datasets",
    "safetensors",
    "peft",
    "trl",
    "bitsandbytes",
)


def package_versions() -> dict[str, str]:
    """{"python": ..., package: version} for the PACKAGES installed here."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def source_revision() -> dict:
    """longtail's own version, and the git commit of the checkout it was imported from (None outside git;
    `git_dirty`: tracked files of the checkout (recipes included) differ from that commit, so the commit alone does
    not say what ran)."""
    import longtail

    src = Path(longtail.__file__).resolve().parent
    out = {"version": getattr(longtail, "__version__", None), "git_commit": None, "git_dirty": None}

    def git(*args):
        return subprocess.run(
            ["git", "-C", str(src), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        # the package's own files must be tracked there: a copy installed into a virtualenv that sits inside some
        # git checkout (a .venv in the repo) is not that checkout's code, and its commit would say it was
        git("ls-files", "--error-unmatch", "__init__.py")
        out["git_commit"] = git("rev-parse", "HEAD")
        # the whole checkout: the recipes that ran sit beside src/, not in it
        out["git_dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def environment() -> dict:
    """Versions, the source revision, the machine and torch's thread count (CPU float sums depend on it)."""
    env = {
        "versions": package_versions(),
        "longtail": source_revision(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    torch = sys.modules.get("torch")  # only when the run used it: the TF-IDF recipe never imports torch
    if torch is not None:
        env["torch_threads"] = torch.get_num_threads()
        env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return env


def data_fingerprint(data) -> dict:
    """Per split of a `PreparedData`: its row count and a SHA-256 of its rows (row id, label, text; in row-id
    order) and of the label list, so two runs can be checked to have trained and scored the same data."""
    labels = json.dumps(list(data.label_names), ensure_ascii=False).encode()
    out = {}
    for split, df in data.splits.items():
        h = hashlib.sha256(labels)
        rows = df.sort_values("row_id", kind="stable")
        for row_id, label_id, text in zip(rows["row_id"], rows["label_id"], rows["text"]):
            h.update(f"{int(row_id)}\0{int(label_id)}\0".encode())
            h.update(str(text).encode("utf-8", "surrogatepass") + b"\0")
        out[split] = {"rows": int(len(df)), "sha256": h.hexdigest()}
    return out
