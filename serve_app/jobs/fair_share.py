"""Per-tenant concurrency: which claimable jobs the dispatcher may send now.

A tenant with ``max_running`` jobs running (or dispatched and about to run) gets no more until one
ends; its other jobs stay queued in priority order and other tenants' jobs go ahead of them. Pure,
so it is unit-tested without a store or Serve.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Iterable, Mapping


def pick(claimable: Iterable[tuple[str, str]], running: Mapping[str, int], dispatched: Mapping[str, str],
         max_running: Callable[[str], int]) -> list[str]:
    """``claimable``: (job id, tenant) in scheduling order; ``running``: tenant -> running jobs in the
    store; ``dispatched``: job id -> tenant of this dispatcher's requests in flight."""
    in_flight = Counter(dispatched.values())
    busy = {t: max(running.get(t, 0), in_flight.get(t, 0)) for t in set(running) | set(in_flight)}
    chosen = []
    for job_id, tenant in claimable:
        if job_id in dispatched:
            continue
        if busy.get(tenant, 0) >= max_running(tenant):
            continue
        busy[tenant] = busy.get(tenant, 0) + 1
        chosen.append(job_id)
    return chosen
