"""Checks before ``up --target minikube|kubernetes`` applies anything, and the image checks of
a rollout: each problem is one error naming the fix (minikube not running, no metrics-server,
an app image the nodes cannot get). The images checked are those of the built manifests (set
from taskscale.toml through kustomize's ``images:``), so the check and the cluster see one value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from taskscale import proc
from taskscale.errors import CommandFailed, MissingBinary, TargetError
from taskscale.targets.kube import rollout
from taskscale.targets.kube.api import KubeApi
from taskscale.targets.kube.manifests import ImageRef

METRICS_API = "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io"
REGISTRY_TIMEOUT = 20.0
# What `docker manifest inspect` says when the registry answers but has no such image.
_NOT_IN_REGISTRY = ("no such manifest", "manifest unknown", "not found")
# proc.run, or a fake in tests (minikube and docker are rarely installed where tests run).
Runner = Callable[..., proc.Completed]


class ClusterChecks:
    """The checks of one target flavor against one context."""

    def __init__(self, flavor: str, context: str | None, runner: Runner) -> None:
        self.flavor = flavor
        self.context = context
        self._run = runner

    def check(self, api: KubeApi, images: list[str]) -> None:
        """One clear error (with the fix) for each thing that would make ``up`` fail later;
        ``images`` are the project's own images in the manifests about to be applied."""
        for image in images:
            if not ImageRef.parse(image).pinned:
                raise TargetError(
                    f"image {image} is not pinned to a version: nodes could run different "
                    "builds under one name",
                    hint="tag every build (e.g. with the version in pyproject.toml) and set "
                    "[images] app in taskscale.toml to NAME:TAG",
                )
        if self.flavor == "minikube":
            self._check_minikube_running()
        api.request("GET", "/version", timeout=10)
        if api.get_or_none(METRICS_API) is None:
            fix = (
                "minikube addons enable metrics-server"
                if self.flavor == "minikube"
                else "kubectl apply -f https://github.com/kubernetes-sigs/metrics-server/"
                "releases/latest/download/components.yaml"
            )
            raise TargetError(
                f"metrics-server is not installed in context {api.context}: the app's "
                "HorizontalPodAutoscaler cannot read CPU usage",
                hint=f"run `{fix}`",
            )
        if self.flavor == "minikube":
            self._check_images_loaded(images)
        else:
            self._check_images_pullable(images)

    def minikube(self, *args: str, timeout: float = 60) -> proc.Completed:
        try:
            return self._run(
                ["minikube", *args, "-p", self.context or "minikube"], timeout=timeout, check=False
            )
        except MissingBinary as exc:
            raise MissingBinary(
                "minikube is not installed",
                hint="install it (https://minikube.sigs.k8s.io/docs/start/) or use "
                "--target kubernetes with any cluster",
            ) from exc

    def _check_minikube_running(self) -> None:
        result = self.minikube("status", "--format", "{{.Host}}/{{.APIServer}}")
        state = result.stdout.strip()
        if result.returncode != 0 or state != "Running/Running":
            raise TargetError(
                f"minikube is not running (status: {state or 'unknown'})",
                hint="run `minikube start --cni=calico` (calico enforces the NetworkPolicies)",
            )

    def _check_images_loaded(self, images: list[str]) -> None:
        listed = self.minikube("image", "ls").stdout.split()
        present = {normalise_image(image) for image in listed}
        for image in images:
            if normalise_image(image) not in present:
                raise TargetError(
                    f"image {image} is not in the minikube cluster",
                    hint=f"build it into minikube's engine: {self.minikube_build(image)}",
                )

    def minikube_build(self, image: str) -> str:
        """The one command that builds ``image`` from the project into Minikube's engine."""
        return (
            f"`minikube -p {self.context or 'minikube'} image build -t {image} "
            "-f deploy/Dockerfile .` in the project's root"
        )

    def _check_images_pullable(self, images: list[str]) -> None:
        """The app image must name a registry the nodes can pull from, and be in it if we can
        tell (``docker manifest inspect``, when docker is installed; other failures such as no
        credentials or no network are not proof of absence and pass)."""
        for image in images:
            name = image.partition("@")[0]
            if "/" not in name:
                raise TargetError(
                    f"image {image} is a local-only name: cluster nodes would pull "
                    f"{normalise_image(image)}, which is not your build",
                    hint=f"push it to a registry the cluster can pull from (`docker tag {image} "
                    f"REGISTRY/{name}` then `docker push`) and set [images] app in "
                    "taskscale.toml to that reference",
                )
            try:
                result = self._run(
                    ["docker", "manifest", "inspect", image], timeout=REGISTRY_TIMEOUT, check=False
                )
            except (MissingBinary, CommandFailed):
                continue  # no docker, or the registry did not answer in time: cannot tell
            said = (result.stderr or result.stdout).strip()
            if result.returncode != 0 and any(m in said.lower() for m in _NOT_IN_REGISTRY):
                raise TargetError(
                    f"image {image} is not in its registry "
                    f"(docker manifest inspect: {said.splitlines()[0][:160]})",
                    hint=f"build and push it: `docker push {image}`",
                )

    def check_images(self, pods: list[dict[str, Any]]) -> None:
        """A TargetError (with the fix) when a container of ``pods`` cannot get its image."""
        problem = rollout.image_problem(pods)
        if problem is not None:
            pod, image, reason = problem
            raise TargetError(
                f"image {image} is not available to the cluster ({reason} in pod {pod})",
                hint=self.image_hint(image),
            )

    def image_hint(self, image: str) -> str:
        if self.flavor == "minikube":
            return f"build it into minikube's engine: {self.minikube_build(image)}"
        return (
            f"push {image} to a registry the cluster can pull from and set [images] in "
            "taskscale.toml to that reference"
        )


def normalise_image(image: str) -> str:
    """``redis`` -> ``docker.io/library/redis:latest``: the form ``minikube image ls`` prints."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and not digest:
        name += ":latest"
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    return f"{name}@{digest}" if digest else name
