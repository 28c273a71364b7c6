"""Pure parts of the kubernetes target: preparing objects, rollout progress, image names."""

from __future__ import annotations

from typing import Any

import pytest

from taskscale.errors import ConfigError, TargetError, UsageError
from taskscale.loadgen.channel import decode_records, encode_record
from taskscale.targets.base import validate_replicas
from taskscale.targets.kube import manifests, rollout
from taskscale.targets.kube.loadgen import ROLE_LABEL, _of_role, cpu_cores
from taskscale.targets.kube.preflight import normalise_image


def _objects() -> list[dict[str, Any]]:
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "app"}, "spec": {}},
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "app", "namespace": "old"},
            "spec": {
                "minReplicas": 3,
                "maxReplicas": 10,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": 70},
                        },
                    }
                ],
            },
        },
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "old"}},
    ]


def test_prepare_sets_namespace_and_hpa_and_orders_for_apply() -> None:
    original = _objects()
    prepared = manifests.prepare(
        original, namespace="demo", min_replicas=4, max_replicas=12, cpu_target_percent=55
    )
    assert [o["kind"] for o in prepared] == [
        "Namespace",
        "Secret",
        "Deployment",
        "HorizontalPodAutoscaler",
    ]
    assert prepared[0]["metadata"] == {"name": "demo"}
    assert all(o["metadata"]["namespace"] == "demo" for o in prepared[1:])
    hpa = prepared[-1]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (4, 12)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 55
    assert original[1]["spec"]["minReplicas"] == 3, "the input is not modified"


def test_prepare_refuses_unknown_kinds() -> None:
    with pytest.raises(ConfigError, match="does not know how to apply"):
        manifests.prepare(
            [{"apiVersion": "x/v1", "kind": "Widget", "metadata": {"name": "w"}}],
            namespace="n",
            min_replicas=1,
            max_replicas=1,
            cpu_target_percent=50,
        )


def _deployment(wanted: int, **status: int) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": "app", "generation": 2},
        "spec": {"replicas": wanted},
        "status": {"observedGeneration": 2, **status},
    }


def test_deployment_progress() -> None:
    assert not rollout.progress(_deployment(3, readyReplicas=2, updatedReplicas=3)).done
    done = rollout.progress(
        _deployment(3, replicas=3, readyReplicas=3, updatedReplicas=3, availableReplicas=3)
    )
    assert done.done and done.describe() == "app 3/3"
    # Old pods still terminating: not done yet.
    surge = _deployment(3, replicas=4, readyReplicas=3, updatedReplicas=3, availableReplicas=3)
    assert not rollout.progress(surge).done
    stale = _deployment(1, replicas=1, readyReplicas=1, updatedReplicas=1, availableReplicas=1)
    stale["status"]["observedGeneration"] = 1
    assert not rollout.progress(stale).done, "the controller has not seen the new spec"
    assert rollout.progress(_deployment(0)).done, "scaled to zero is a finished rollout"


def test_job_progress_and_failure() -> None:
    job: dict[str, Any] = {"kind": "Job", "metadata": {"name": "migrate"}, "spec": {}}
    assert not rollout.progress(job).done
    job["status"] = {"succeeded": 1}
    assert rollout.progress(job).done
    job["status"] = {
        "conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]
    }
    with pytest.raises(TargetError, match="job migrate failed: BackoffLimitExceeded"):
        rollout.progress(job)


def test_job_outcome() -> None:
    job: dict[str, Any] = {"kind": "Job", "metadata": {"name": "locust"}, "spec": {}}
    assert rollout.job_outcome(job) is None
    job["status"] = {"succeeded": 1}
    assert rollout.job_outcome(job) == "succeeded"
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "Deadline"}]}
    assert rollout.job_outcome(job) == "Deadline"
    job["status"] = {"conditions": [{"type": "Failed", "status": "True"}]}
    assert rollout.job_outcome(job) == "failed"
    with pytest.raises(TargetError, match="job locust failed: failed"):
        rollout.progress(job)


def test_locust_pods_of_a_role() -> None:
    def pod(name: str, role: str | None) -> dict[str, Any]:
        labels = {ROLE_LABEL: role} if role else {}
        return {"metadata": {"name": name, "labels": labels}}

    pods = [pod("w-2", "worker"), pod("m-1", "master"), pod("w-1", "worker"), pod("x", None)]
    assert [p["metadata"]["name"] for p in _of_role(pods, "worker")] == ["w-1", "w-2"]
    assert [p["metadata"]["name"] for p in _of_role(pods, "master")] == ["m-1"]
    assert _of_role([], "master") == []


def test_validate_replicas_names_the_setting() -> None:
    with pytest.raises(UsageError) as info:
        validate_replicas(5, 4)
    assert info.value.message == "--replicas 5 is above the maximum of 4"
    assert info.value.hint == "raise [stack] max_replicas in taskscale.toml"
    with pytest.raises(UsageError) as info:
        validate_replicas(5, 4, setting="[kubernetes] hpa_max_replicas", maximum="the HPA's max")
    assert info.value.message == "--replicas 5 is above the HPA's max of 4"
    assert info.value.hint == "raise [kubernetes] hpa_max_replicas in taskscale.toml"


def test_image_problem_and_waiting_reasons() -> None:
    pods = [
        {
            "metadata": {"name": "app-1"},
            "spec": {"containers": [{"name": "app", "image": "demo:1"}]},
            "status": {
                "containerStatuses": [
                    {"name": "app", "state": {"waiting": {"reason": "ErrImageNeverPull"}}}
                ]
            },
        }
    ]
    assert rollout.image_problem(pods) == ("app-1", "demo:1", "ErrImageNeverPull")
    assert rollout.waiting_reasons(pods) == ["app-1/app: ErrImageNeverPull"]
    assert rollout.image_problem([]) is None


@pytest.mark.parametrize(
    ("image", "normalised"),
    [
        ("redis", "docker.io/library/redis:latest"),
        ("tasks-api-app:latest", "docker.io/library/tasks-api-app:latest"),
        ("me/app:1", "docker.io/me/app:1"),
        ("ghcr.io/me/app:1", "ghcr.io/me/app:1"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
    ],
)
def test_normalise_image(image: str, normalised: str) -> None:
    assert normalise_image(image) == normalised


def test_records_survive_chunking_and_interleaving() -> None:
    big = {"blob": "x" * 30_000 + "".join(str(i) for i in range(5000))}
    first = encode_record("dump", big)
    second = encode_record("dump", {"n": 2})
    assert len(first) > 1 and all(len(line) < 9000 for line in first)
    # Another process's lines between the chunks, a kubelet timestamp in front of one.
    lines = [first[0], "other output", *second, *first[1:-1], "2025-01-01T00:00:00Z " + first[-1]]
    assert decode_records(lines, "dump") == [{"n": 2}, big]
    assert decode_records(first[:-1], "dump") == [], "an incomplete record is not returned"
    assert decode_records(lines, "progress") == []


@pytest.mark.parametrize(("quantity", "cores"), [("250m", 0.25), ("1", 1.0), ("5000000n", 0.005)])
def test_cpu_quantities(quantity: str, cores: float) -> None:
    assert cpu_cores(quantity) == pytest.approx(cores)
