"""Run a recipe's main() as its own process (under torchrun / accelerate launch, or alone), for the
multi-process and kill/resume tests in test_scaleout.py:

    python tests/launch_recipe.py <recipe> [recipe arguments ...]

Test hooks, set through the environment:
- LONGTAIL_TEST_EVENTS=<file>: each results write (report.write_run_outputs, runs.write_run_files) and
  each Hub call (a fake HfApi: nothing leaves the machine) appends a JSON line {"event", "rank"}.
- LONGTAIL_TEST_EXITS=<file>: once the recipe's main() returns, each process appends {"rank", "in_process_group",
  "gloo_threads", "gloo_threads_after_end_training", "scored", "results_written"}: whether it is still in a
  torch.distributed group, which it should have left (longtail.distributed.end_training), how many gloo worker
  threads it still runs (read from /proc: Linux only) and ran right after end_training returned (the recipe still
  holding its trainers: 0 when the group went inside end_training, as its last Python reference, not with a
  trainer's DDP wrapper), whether main() returned the validation metrics (the main process scores), and whether
  the events file already holds the main process's results write (end_training waits for it).
- LONGTAIL_TEST_KILL_AFTER_SAVES=<n>: the process SIGKILLs itself right after its n-th checkpoint
  (no cleanup, no flush: what an OOM killer or a preempted node does).
- LONGTAIL_TEST_STACKS_AFTER=<seconds>: a process still running then (a hang, e.g. a gloo deadlock) prints every
  thread's Python stack to stderr and exits 1, before the test's own timeout kills it without a word; one the
  launcher stops with SIGTERM (another rank failed) prints its stacks too.
Reports use 100 bootstrap resamples instead of 1,000 (their CIs are not under test) and one torch thread.
"""

from __future__ import annotations

import faulthandler
import functools
import json
import os
import signal
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_recipes import load_recipe  # noqa: E402

import longtail.distributed  # noqa: E402
import longtail.report  # noqa: E402
import longtail.runs  # noqa: E402

RANK = int(os.environ.get("RANK", "0"))
EVENTS = os.environ.get("LONGTAIL_TEST_EVENTS")
EXITS = os.environ.get("LONGTAIL_TEST_EXITS")


AFTER_END_TRAINING = {}


def gloo_threads() -> int:
    tasks = Path("/proc/self/task")
    return sum(
        (tasks / t / "comm").read_text().startswith("pt_gloo")
        for t in (os.listdir(tasks) if tasks.is_dir() else [])
    )


def record(event: str) -> None:
    if EVENTS:
        with open(EVENTS, "a", encoding="utf-8") as f:  # appends of one short line do not interleave
            f.write(json.dumps({"event": event, "rank": RANK}) + "\n")


def recorded(event: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        record(event)
        return fn(*args, **kwargs)

    return wrapper


class FakeHfApi:
    def __init__(self, token=None):
        record("hub_login")

    def create_repo(self, repo_id, private=None, exist_ok=False):
        import huggingface_hub

        record("hub_create_repo")
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, folder_path, repo_id, **kwargs):
        record("hub_upload_folder")


class KillAfterSaves(transformers.TrainerCallback):
    def __init__(self, saves: int):
        self.saves, self.seen = saves, 0

    def on_save(self, args, state, control, **kwargs):  # called once the checkpoint folder is complete
        self.seen += 1
        if self.seen == self.saves:
            os.kill(os.getpid(), signal.SIGKILL)


def install_hooks() -> None:
    import huggingface_hub

    huggingface_hub.HfApi = FakeHfApi
    huggingface_hub.whoami = lambda token=None: {"name": "me"}  # --push_to_hub's check, on every rank
    longtail.report.write_run_outputs = recorded("write_run_outputs", longtail.report.write_run_outputs)
    longtail.runs.write_run_files = recorded("write_run_files", longtail.runs.write_run_files)
    longtail.report.score_split = functools.partial(longtail.report.score_split, n_resamples=100)
    end_training = longtail.distributed.end_training

    def end_training_and_count(*args):  # recipes import it after this hook is installed
        end_training(*args)
        AFTER_END_TRAINING["gloo_threads"] = gloo_threads()

    longtail.distributed.end_training = end_training_and_count
    saves = int(os.environ.get("LONGTAIL_TEST_KILL_AFTER_SAVES", "0"))
    if saves:
        init = transformers.Trainer.__init__

        def init_with_kill(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.add_callback(KillAfterSaves(saves))

        transformers.Trainer.__init__ = init_with_kill


if __name__ == "__main__":
    stacks_after = float(os.environ.get("LONGTAIL_TEST_STACKS_AFTER", "0"))
    if stacks_after:  # armed until the interpreter exits: a hang in its teardown (gloo threads) is caught too
        faulthandler.dump_traceback_later(stacks_after, exit=True)
        faulthandler.register(signal.SIGTERM, chain=True)
    torch.set_num_threads(1)
    install_hooks()
    returned = load_recipe(sys.argv[1]).main(sys.argv[2:])
    if EXITS:
        exit_state = {
            "rank": RANK,
            "in_process_group": torch.distributed.is_initialized(),
            "scored": "macro_f1" in returned.get("validation", {}),
            "gloo_threads": gloo_threads(),
            "gloo_threads_after_end_training": AFTER_END_TRAINING.get("gloo_threads"),
            "results_written": any(
                json.loads(line)["event"] == "write_run_files"
                for line in (Path(EVENTS).read_text().splitlines() if EVENTS else [])
            ),
        }
        with open(EXITS, "a", encoding="utf-8") as f:
            f.write(json.dumps(exit_state) + "\n")
