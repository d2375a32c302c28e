"""Where each model runs: placement, preemption and fallback. PURE: no I/O, no clock, no randomness.

One pass of `schedule`:

1. Reserve what already runs and may stay where it is, before anything else, so that nothing is
   ever moved to improve packing: engines that match their spec (`Running.reusable`), engines that
   restart in place after a spec change, and engines that run only as somebody's fallback
   ("standby", held at the priority they would run at).
2. Evaluate the enabled models one at a time, highest priority first, ties by id. A reserved model
   is confirmed where it is. Any other model gets free room (spread: most free memory first; pack:
   best fit) or, failing that, room freed by preempting strictly lower-priority models that have
   not been confirmed yet. On a host with few GPUs, placement looks ahead: pack takes, of the GPUs
   where the model fits, those that leave the models to come the most room (best fit among
   equals), and spread breaks ties between equally free GPUs the same way.
   A model that cannot be placed is unschedulable and its fallback is evaluated at once. The
   fallback runs, and is protected from preemption, at max(primary priority, fallback priority),
   but it preempts only what its primary could: models of lower priority than the primary.
   (Otherwise a fallback could preempt a model its primary could not, the primary would take
   that room on the next pass, and the two would take turns.)
3. A standby fallback that no primary needed, or that its primary displaced, or a reserved engine
   that found no port at its turn, held a place that other models may have been refused for. The
   pass then runs again without reserving it, so that planning the converged system again changes
   nothing (level-triggered, no flapping).

Ports follow the same rules as memory: when the port range is exhausted, a model takes the port of
an engine that this plan stops, or else preempts the lowest-priority engine (strictly lower than
its own, not yet confirmed) that holds a port in the range.

Victims are chosen exactly (highest victim priority, then count, then memory freed beyond need,
then ids) for models on one GPU, and for pinned or multi-GPU models when the candidates are few
(a server); otherwise the cheapest GPUs are chosen one by one, which can miss the joint optimum.

Modules: `model` (input, output, limits), `ports`, `board` (the state of a pass and its
bookkeeping), `index` (the single-victim index: the best one victim on any GPU without scanning
them all), `victims` (victim choice), `lookahead` (placement without preemption), `passes` (the
pass itself and `schedule`).
"""

from reconciler.core.schedule.passes import schedule
from reconciler.core.schedule.values import (
    AFTER_PREEMPTING,
    EXACT_VICTIM_SUBSETS,
    LOOKAHEAD_GPUS,
    LOOKAHEAD_MODELS,
    LOOKAHEAD_OPTIONS,
    LOOKAHEAD_STEPS,
    MAX_PRIORITY,
    MEMORY_UNKNOWN,
    Demand,
    GpuCapacity,
    Placement,
    Policy,
    Running,
    Schedule,
    capacities,
)

__all__ = [
    "AFTER_PREEMPTING",
    "EXACT_VICTIM_SUBSETS",
    "LOOKAHEAD_GPUS",
    "LOOKAHEAD_MODELS",
    "LOOKAHEAD_OPTIONS",
    "LOOKAHEAD_STEPS",
    "MAX_PRIORITY",
    "MEMORY_UNKNOWN",
    "Demand",
    "GpuCapacity",
    "Placement",
    "Policy",
    "Running",
    "Schedule",
    "capacities",
    "schedule",
]
