"""RPO: every acknowledged write of the drill's writers, read back from the current primary.

The writers keep, per task, the digest of what the server said it stored (``loadgen.ledger``);
after the drill the target reads those tasks from the primary (``FaultInjector.read_tasks``:
psycopg locally, psql in the container or pod elsewhere: the same on every target, and it
needs neither the API nor a writer's token). A task that is missing lost its acknowledged
create; a task whose content matches neither the last acknowledged write nor a later write
that got no answer lost an acknowledged update.
"""

from __future__ import annotations

from collections.abc import Callable

from taskscale.errors import TaskscaleError
from taskscale.loadgen.ledger import Ledger, digest
from taskscale.report.model import Rpo
from taskscale.targets.capabilities import TaskRow

SHOWN_IDS = 10
BATCH = 500


def verify(ledger: Ledger, read: Callable[[list[int]], dict[int, TaskRow]], *, source: str) -> Rpo:
    """Read every task of ``ledger`` with ``read`` (in batches) and count what was lost."""
    ids = sorted(ledger.tasks)
    rows: dict[int, TaskRow] = {}
    unreadable: set[int] = set()
    note = None
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        try:
            rows.update(read(batch))
        except TaskscaleError as exc:
            unreadable.update(batch)
            note = f"could not read {len(unreadable)} task(s) back: {exc.message}"
    lost: list[int] = []
    changed: list[int] = []
    for task_id in ids:
        if task_id in unreadable:
            continue
        row = rows.get(task_id)
        if row is None:
            lost.append(task_id)
        elif digest(*row) not in ledger.tasks[task_id]:
            changed.append(task_id)
    return Rpo(
        acknowledged_writes=ledger.acknowledged,
        lost=len(lost),
        changed=len(changed),
        unverified=len(unreadable),
        ids=sorted(lost + changed)[:SHOWN_IDS],
        source=source,
        note=note,
    )
