"""Run under `torchrun --nproc_per_node 2` (test_scaleout.py): the premise of longtail.distributed.end_training.

Rank 1 starts an all_gather on Python tensors that rank 0 joins only DELAY seconds later, drops every other
reference and leaves the group, then drops its last Python reference to the group while its gloo worker is
still inside that gather. Releasing the gather's tensors takes the GIL; a destructor that joined the worker
while holding the GIL would deadlock here. Each rank prints "rank R done in S s" (rank 1: how long the drop
waited for the worker, about DELAY when the race was exercised). A deadlock prints the stacks and exits, as
launch_recipe.py does (LONGTAIL_TEST_STACKS_AFTER).
"""

from __future__ import annotations

import faulthandler
import os
import time

import torch
import torch.distributed as dist

DELAY = 5.0

if __name__ == "__main__":
    faulthandler.dump_traceback_later(float(os.environ.get("LONGTAIL_TEST_STACKS_AFTER", "60")), exit=True)
    dist.init_process_group("gloo")
    rank, group = dist.get_rank(), dist.group.WORLD
    dist.barrier()
    out = [torch.zeros(3) for _ in range(2)]
    if rank == 0:
        time.sleep(DELAY)  # rank 1 is dropping its group by now
        dist.all_gather(out, torch.ones(3))
    else:
        work = dist.all_gather(out, torch.ones(3), async_op=True)  # its worker waits for rank 0
        del out, work
    dist.destroy_process_group()
    started = time.time()
    del group  # the last reference: the group's destructor joins its worker threads
    print(f"rank {rank} done in {time.time() - started:.1f} s", flush=True)
