"""How far along a workload is, read from its status (pure functions over API objects)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from taskscale.errors import TargetError

WORKLOAD_KINDS = ("StatefulSet", "Job", "Deployment")
# Waiting reasons that mean "the image is not available to the cluster": fail at once.
IMAGE_ERRORS = ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName")


@dataclass(frozen=True)
class Progress:
    kind: str
    name: str
    ready: int
    desired: int
    done: bool

    def describe(self) -> str:
        if self.kind == "Job":
            return f"{self.name} {'done' if self.done else 'running'}"
        return f"{self.name} {self.ready}/{self.desired}"


def _observed(obj: dict[str, Any]) -> bool:
    generation = obj.get("metadata", {}).get("generation")
    observed = obj.get("status", {}).get("observedGeneration")
    return generation is None or (observed is not None and observed >= generation)


def job_outcome(obj: dict[str, Any]) -> str | None:
    """A Job's ``"succeeded"``, or its failure message, or None while it runs."""
    status = obj.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return str(condition.get("message") or condition.get("reason") or "failed")
    if int(status.get("succeeded") or 0) >= 1:
        return "succeeded"
    return None


def progress(obj: dict[str, Any]) -> Progress:
    """Ready/desired of a Deployment, StatefulSet or Job, and whether its rollout finished."""
    kind = obj["kind"]
    name = obj["metadata"]["name"]
    spec = obj.get("spec", {})
    status = obj.get("status") or {}
    if kind == "Job":
        outcome = job_outcome(obj)
        if outcome not in (None, "succeeded"):
            raise TargetError(
                f"job {name} failed: {outcome}",
                hint=f"read its log: taskscale logs {name} --target ...",
            )
        succeeded = int(status.get("succeeded") or 0)
        return Progress(kind, name, min(succeeded, 1), 1, succeeded >= 1)
    # The API server defaults spec.replicas to 1; an HPA changes it afterwards.
    desired = int(spec.get("replicas", 1))
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    current = int(status.get("replicas") or 0)
    if kind == "Deployment":
        available = int(status.get("availableReplicas") or 0)
        done = (
            _observed(obj)
            and updated >= desired
            and ready >= desired
            and available >= desired
            and current <= desired
        )
    else:
        done = _observed(obj) and ready >= desired and updated >= desired
    return Progress(kind, name, min(ready, desired) if desired else ready, desired, done)


def image_problem(pods: list[dict[str, Any]]) -> tuple[str, str, str] | None:
    """(pod, image, reason) of the first container that cannot get its image, if any."""
    for pod in pods:
        status = pod.get("status") or {}
        specs = {
            c["name"]: c.get("image", "?")
            for c in [
                *pod.get("spec", {}).get("initContainers", []),
                *pod.get("spec", {}).get("containers", []),
            ]
        }
        for cs in [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]:
            reason = ((cs.get("state") or {}).get("waiting") or {}).get("reason")
            if reason in IMAGE_ERRORS:
                image = cs.get("image") or specs.get(cs.get("name", ""), "?")
                return pod["metadata"]["name"], image, reason
    return None


def waiting_reasons(pods: list[dict[str, Any]]) -> list[str]:
    """``pod: container waiting (reason)`` lines for pods that are not running cleanly."""
    lines = []
    for pod in pods:
        status = pod.get("status") or {}
        for cs in [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]:
            waiting = (cs.get("state") or {}).get("waiting")
            if waiting:
                detail = f": {waiting['message']}" if waiting.get("message") else ""
                lines.append(
                    f"{pod['metadata']['name']}/{cs.get('name')}: "
                    f"{waiting.get('reason', 'waiting')}{detail}"
                )
        if status.get("phase") == "Pending" and not status.get("containerStatuses"):
            for condition in status.get("conditions") or []:
                if condition.get("status") == "False" and condition.get("message"):
                    lines.append(f"{pod['metadata']['name']}: {condition['message']}")
    return lines
