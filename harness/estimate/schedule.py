"""List scheduling of a plan's stages over `workers` identical workers, as harness/executors/scheduler.py runs
them: whenever a worker is free, the first stage in `order` (the executor's start_order) whose waits (hard and
soft) have all ended starts on it. (Graham's list scheduling: within 2 - 1/workers of the best schedule; here it is the executor's own
rule, so it predicts the executor, not the optimum.)"""

from __future__ import annotations

import heapq
from dataclasses import dataclass


@dataclass(frozen=True)
class Slot:
    stage: str
    worker: int
    start: float
    end: float


def list_schedule(order: list[str], waits: dict[str, list[str]], seconds: dict[str, float], workers: int) -> list[Slot]:
    """Start and end of every stage in `order` (scheduler.start_order of a plan's stages). Waits on stages
    outside `order` count as ended at 0."""
    known = set(order)
    pending = list(order)
    ended_at: dict[str, float] = {}
    free = list(range(workers))  # idle workers, lowest first
    running: list[tuple[float, int, str]] = []  # (end, worker, stage)
    slots: list[Slot] = []
    now = 0.0
    while pending or running:
        for stage in list(pending):
            if not free:
                break
            if all(dependency in ended_at or dependency not in known for dependency in waits.get(stage, [])):
                worker = free.pop(0)
                end = now + seconds[stage]
                heapq.heappush(running, (end, worker, stage))
                slots.append(Slot(stage, worker, now, end))
                pending.remove(stage)
        if not running:
            raise ValueError(f"no stage can start: {pending[0]} waits on a stage that never ends")
        now, worker, stage = heapq.heappop(running)
        ended_at[stage] = now
        free.append(worker)
        while running and running[0][0] == now:  # everything that ends at this instant frees its worker first
            _, worker, stage = heapq.heappop(running)
            ended_at[stage] = now
            free.append(worker)
        free.sort()
    return slots


def makespan(slots: list[Slot]) -> float:
    return max((slot.end for slot in slots), default=0.0)
