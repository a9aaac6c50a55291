"""deploy/ checked without Docker or a cluster: parsed, held to the real CLI, health checks run.

Nothing here builds an image or applies a manifest. What can be checked on this machine is:
the files parse and name the right kinds; every ``onnxforge serve`` command line in them uses
flags that ``onnxforge serve --help`` lists and parses with the real click command; ports,
probes, annotations and the image's user agree with those command lines; the health-check
commands import nothing the image does not install; and they, run exactly as written, and the
probes' paths answer correctly against a real server.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from packaging.requirements import Requirement

from onnxforge.cli import cli
from onnxforge.protocol.generated import health_pb2, health_pb2_grpc
from onnxforge.server.app import Settings
from onnxforge.server.security import Security
from tests.conftest import REPO_ROOT
from tests.server.certs import issue, make_ca
from tests.server.conftest import ServerThread
from tests.server.processes import ServeProcess

DEPLOY = REPO_ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DEPLOYMENT = DEPLOY / "kubernetes" / "deployment.yaml"
SERVICE = DEPLOY / "kubernetes" / "service.yaml"
RUNTIME = DEPLOY / "kserve" / "servingruntime.yaml"
ISVC = DEPLOY / "kserve" / "inferenceservice.yaml"
README = DEPLOY / "README.md"

EXPECTED_KINDS = {
    DEPLOYMENT: [("apps/v1", "Deployment")],
    SERVICE: [("v1", "Service")],
    RUNTIME: [("serving.kserve.io/v1alpha1", "ServingRuntime")],
    ISVC: [("serving.kserve.io/v1beta1", "InferenceService")],
}

# Fields of KServe's Go types (pkg/apis/serving/v1alpha1/servingruntime_types.go,
# v1beta1/predictor.go, predictor_model.go, component.go): a misspelt key would be dropped
# silently by the API server's pruning, so hold the manifests to them.
SERVING_RUNTIME_SPEC_FIELDS = {
    "supportedModelFormats", "multiModel", "disabled", "protocolVersions", "workerSpec",
    "containers", "volumes", "nodeSelector", "affinity", "tolerations", "labels",
    "annotations", "imagePullSecrets", "hostIPC", "grpcEndpoint", "grpcDataEndpoint",
    "httpDataEndpoint", "replicas", "storageHelper", "builtInAdapter",
}  # fmt: skip
SUPPORTED_MODEL_FORMAT_FIELDS = {"name", "version", "autoSelect", "priority"}
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
PREDICTOR_FIELDS = {
    "model", "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency",
    "timeout", "canaryTrafficPercent", "logger", "batcher", "labels", "annotations",
    "deploymentStrategy", "serviceAccountName", "nodeSelector", "tolerations", "affinity",
    "volumes", "containers", "imagePullSecrets",
}  # fmt: skip
MODEL_SPEC_FIELDS = {
    "modelFormat", "runtime", "storageUri", "runtimeVersion", "protocolVersion", "storage",
    # the inlined corev1.Container
    "name", "image", "command", "args", "env", "envFrom", "resources", "ports",
    "volumeMounts", "securityContext", "livenessProbe", "readinessProbe", "startupProbe",
}  # fmt: skip

HEALTH_TARGET = "127.0.0.1:8000"  # what the image's HEALTHCHECK and the mTLS probe dial
TLS_CA = "/var/run/secrets/onnxforge/tls/ca.crt"  # in deploy/README.md's mutual-TLS probe
PROBE_CERT = "/var/run/secrets/onnxforge/probe/tls.crt"  # its client certificate
PROBE_KEY = "/var/run/secrets/onnxforge/probe/tls.key"
LIVE, READY = "/v2/health/live", "/v2/health/ready"  # what the server answers without a token

TINY_SPEC = """\
name: tiny
input: {name: x, shape: [4], dtype: float32}
output: {name: y}
layers:
  - {type: dense, units: 3, activation: softmax}
variants: [fp32]
serving: {max_batch_size: 8, max_queue_delay_us: 100, instances: 1}
"""


# ------------------------------------------------------------------------------ readers


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    instructions, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def instruction(name: str) -> list[str]:
    return [rest for keyword, rest in dockerfile() if keyword == name]


def exec_form(text: str) -> list[str]:
    value = json.loads(text)  # shell form would make /bin/sh PID 1 and swallow SIGTERM
    assert isinstance(value, list) and all(isinstance(part, str) for part in value), text
    return value


def healthcheck_command() -> list[str]:
    [line] = instruction("HEALTHCHECK")
    match = re.fullmatch(r"(?P<options>.*?)\s*CMD\s+(?P<command>\[.*\])", line)
    assert match, f"HEALTHCHECK without an exec-form CMD: {line}"
    return exec_form(match["command"])


def container(path: Path) -> dict[str, Any]:
    [doc] = load(path)
    spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]
    [first] = spec["containers"]
    assert isinstance(first, dict)
    return first


def readme_yaml_blocks() -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.DOTALL)
    return [yaml.safe_load(block) for block in blocks]


def command_lines() -> dict[str, list[str]]:
    """Every ``onnxforge serve`` command line in deploy/, by where it is."""
    lines = {
        "Dockerfile ENTRYPOINT + CMD": exec_form(instruction("ENTRYPOINT")[-1])
        + exec_form(instruction("CMD")[-1]),
        "kubernetes/deployment.yaml": container(DEPLOYMENT)["command"]
        + container(DEPLOYMENT)["args"],
        "kserve/servingruntime.yaml": container(RUNTIME)["command"] + container(RUNTIME)["args"],
    }
    for number, block in enumerate(readme_yaml_blocks()):
        if isinstance(block, dict) and "args" in block:
            lines[f"README.md yaml block {number}"] = block["command"] + block["args"]
    return lines


COMMAND_LINES = command_lines()


def serve_args(where: str) -> list[str]:
    argv = [str(part) for part in COMMAND_LINES[where]]
    assert argv[:2] == ["onnxforge", "serve"], f"{where}: {argv}"
    return argv[2:]


def parse(args: list[str]) -> dict[str, Any]:
    """What the real ``onnxforge serve`` makes of ``args`` (raises click's usage errors)."""
    command = cli.commands["serve"]
    with command.make_context("serve", list(args)) as context:
        return dict(context.params)


def params(where: str) -> dict[str, Any]:
    return parse(serve_args(where))


def http_port(got: dict[str, Any]) -> int | None:
    """The HTTP/REST port a parsed command line serves (None with --no-http)."""
    return None if got["no_http"] else int(got["http_port"])


def ports_of(got: dict[str, Any]) -> dict[str, int]:
    """The ports a parsed command line listens on, by the names deploy/ gives them."""
    ports = {"grpc": int(got["port"]), "metrics": int(got["metrics_port"])}
    if http_port(got) is not None:
        ports["http"] = int(got["http_port"])
    return ports


def probes(box: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {key: value for key, value in box.items() if key.endswith("Probe")}


def readme_exec_probes() -> list[list[str]]:
    """The ``exec`` probe commands of deploy/README.md's YAML blocks."""
    return [
        probe["exec"]["command"]
        for block in readme_yaml_blocks()
        for key, probe in block.items()
        if key.endswith("Probe") and "exec" in probe
    ]


def health_commands() -> dict[str, list[str]]:
    """Every health-check command deploy/ runs inside the image, by where it is."""
    found = {"Dockerfile HEALTHCHECK": healthcheck_command()}
    for number, command in enumerate(readme_exec_probes()):
        found[f"README.md exec probe {number}"] = command
    return found


# ------------------------------------------------------------------------------ what the image has


@functools.cache
def _modules_by_distribution() -> dict[str, frozenset[str]]:
    """Importable top-level names of every installed distribution, by canonical name."""
    found: dict[str, set[str]] = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        for distribution in distributions:
            found.setdefault(_canonical(distribution), set()).add(module)
    return {name: frozenset(modules) for name, modules in found.items()}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_requirements() -> list[str]:
    """``[project] dependencies`` of pyproject.toml: what ``pip install .`` puts in the image."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(line).name for line in project["dependencies"]]


@functools.cache
def runtime_modules(closure: bool) -> frozenset[str]:
    """Top-level modules a health check may import: the standard library, onnxforge, and the
    direct runtime dependencies (``closure``: and what they require in turn, unconditionally
    or for this interpreter; for modules that get imported indirectly)."""
    allowed = set(sys.stdlib_module_names) | {"onnxforge"}
    seen: set[str] = set()
    pending = runtime_requirements()
    while pending:
        name = _canonical(pending.pop())
        if name in seen:
            continue
        seen.add(name)
        allowed |= _modules_by_distribution().get(name, frozenset())
        if not closure:
            continue
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return frozenset(allowed)


def imported_modules(code: str) -> set[str]:
    """Top-level names the code imports (import x.y, from x.y import z)."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def help_flags() -> set[str]:
    """The flags ``onnxforge serve --help`` lists, from the installed command itself."""
    result = subprocess.run(
        [sys.executable, "-m", "onnxforge", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )
    options = result.stdout.split("Options:", 1)[1]
    flags = set(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", options))
    assert {"--host", "--port", "--metrics-port", "--no-build"} <= flags, result.stdout
    return flags


def _tiny_repository(folder: Path) -> Path:
    (folder / "tiny").mkdir(parents=True)
    (folder / "tiny" / "spec.yaml").write_text(TINY_SPEC)
    return folder


def _broken_repository(folder: Path) -> Path:
    """The tiny model, and a model whose file fails to load."""
    repository = _tiny_repository(folder)
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    return repository


def _kubelet_tls() -> ssl.SSLContext:
    """TLS as the kubelet's HTTPS probes speak it: no certificate checked, none presented."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A real server that builds one small model from its spec, with metrics and HTTP on."""
    repository = _tiny_repository(tmp_path_factory.mktemp("deploy-repo"))
    server = ServerThread(
        Settings(repository=repository, port=0, metrics_port=0, http_port=0, threads=1)
    ).start()
    yield server
    server.stop()


def run_health_command(
    argv: list[str], address: str, *replace: tuple[str, str], modules: list[str] | None = None
) -> int:
    """Run a health-check command as written, dialing ``address`` instead of 127.0.0.1:8000.

    A proxy is set in the environment, as it may be in a container: the command must not use
    it. ``modules``, when given, receives the top-level modules loaded when the command ended.
    """
    assert argv[:2] == ["python", "-c"], argv
    code = argv[2]
    assert HEALTH_TARGET in code, code
    code = code.replace(HEALTH_TARGET, address)
    for old, new in replace:
        assert old in code, old
        code = code.replace(old, new)
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    env["http_proxy"] = env["https_proxy"] = f"http://127.0.0.1:{free_port()}"  # nothing there
    returncode, loaded = _run_python(code, env)
    if modules is not None:
        modules.extend(sorted(set(loaded) - _startup_modules()))
    return returncode


_HOOK = (
    "import atexit as _atexit, sys as _sys\n"
    "_atexit.register(lambda: print('MODULES', *sorted({m.split('.')[0] for m in "
    "_sys.modules}), file=_sys.stderr))\n"
)


def _run_python(code: str, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Exit code of ``python -c code``, and the top-level modules loaded when it ended."""
    result = subprocess.run(
        [sys.executable, "-c", _HOOK + code], capture_output=True, text=True, timeout=30, env=env
    )
    [line] = [line for line in result.stderr.splitlines() if line.startswith("MODULES ")]
    return result.returncode, line.split()[1:]


@functools.cache
def _startup_modules() -> frozenset[str]:
    """What any ``python -c`` here loads before its code runs (site, .pth hooks, __main__)."""
    return frozenset(_run_python("pass")[1])


def get(url: str, context: ssl.SSLContext | None = None) -> int:
    """The status of GET ``url`` (no proxy), 4xx and 5xx included."""
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def http_url(server: ServerThread, path: str, scheme: str = "http") -> str:
    assert server.running is not None and server.running.http_port
    return f"{scheme}://127.0.0.1:{server.running.http_port}{path}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ------------------------------------------------------------------------------ the files


def test_every_yaml_parses_into_the_expected_kinds() -> None:
    found = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert set(found) == set(EXPECTED_KINDS), "a new YAML file needs its kinds listed here"
    for path, kinds in EXPECTED_KINDS.items():
        docs = load(path)
        assert [(doc["apiVersion"], doc["kind"]) for doc in docs] == kinds, path
        for doc in docs:
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])


def test_readme_yaml_blocks_parse() -> None:
    blocks = readme_yaml_blocks()
    assert blocks and all(isinstance(block, dict) for block in blocks)


@pytest.mark.parametrize("where", sorted(COMMAND_LINES))
def test_serve_flags_exist_in_the_cli_help(where: str, help_flags: set[str]) -> None:
    used = {arg.split("=", 1)[0] for arg in serve_args(where) if arg.startswith("--")}
    assert used, where
    assert used <= help_flags, f"{where}: not in `onnxforge serve --help`: {used - help_flags}"


@pytest.mark.parametrize("where", sorted(COMMAND_LINES))
def test_command_lines_parse_with_the_real_cli(where: str) -> None:
    got = params(where)
    # In a container the server must listen on every interface, and it must not try to write
    # into its (prebuilt, read-only) repository.
    assert got["host"] == "0.0.0.0"
    assert got["no_build"] is True
    assert got["port"] != got["metrics_port"]


def test_dockerfile_is_two_slim_stages_installing_the_project() -> None:
    stages = instruction("FROM")
    assert len(stages) == 2
    [base] = [rest for keyword, rest in dockerfile() if keyword == "ARG" and "PYTHON_IMAGE" in rest]
    assert base == "PYTHON_IMAGE=python:3.11-slim"
    assert stages[0].startswith("${PYTHON_IMAGE} AS ")
    assert stages[1] == "${PYTHON_IMAGE}"
    runs = instruction("RUN")
    installs = [run for run in runs if "pip install" in run]
    assert len(installs) == 1
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", installs[0])
    assert " -e " not in installs[0] and "--editable" not in installs[0]
    assert any("onnxforge build" in run for run in runs)


def test_dockerfile_copies_everything_pip_install_reads() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]
    assert "onnxforge.protocol.generated" in packages
    needed = {"pyproject.toml", project["project"]["readme"]}
    needed |= {package.split(".")[0] + "/" for package in packages}
    copied = set()
    for rest in instruction("COPY"):
        if rest.startswith("--from="):
            continue
        *sources, _target = rest.split()
        copied |= set(sources)
    assert needed <= copied, f"not copied into the build stage: {needed - copied}"
    assert "models/" in copied


def test_dockerfile_runs_as_a_numeric_non_root_user_and_exposes_every_port() -> None:
    [user] = instruction("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can verify it"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    entry = params("Dockerfile ENTRYPOINT + CMD")
    exposed = {int(port.split("/")[0]) for line in instruction("EXPOSE") for port in line.split()}
    assert ports_of(entry) == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert exposed == set(ports_of(entry).values())
    # Written out, not left to the default, so that the file says which port EXPOSE is for.
    assert "--http-port" in serve_args("Dockerfile ENTRYPOINT + CMD")
    assert entry["repository"] == Path("/models")


def test_dockerfile_healthcheck_asks_the_served_http_port_for_readiness() -> None:
    entry = params("Dockerfile ENTRYPOINT + CMD")
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert f"127.0.0.1:{http_port(entry)}" == HEALTH_TARGET
    assert f"'http://{HEALTH_TARGET}{READY}'" in command[2]
    # No TLS on the image's command line: plain HTTP is what answers there.
    assert entry["tls_cert"] is None


@pytest.mark.parametrize("where", sorted(health_commands()))
def test_health_commands_import_only_what_the_image_installs(where: str) -> None:
    """``pip install .`` installs [project] dependencies only: not grpcio-health-checking."""
    command = health_commands()[where]
    assert command[:2] == ["python", "-c"], where
    imported = imported_modules(command[2])
    allowed = runtime_modules(closure=False)
    assert imported <= allowed, f"{where} imports {imported - allowed}, not a runtime dependency"
    assert "grpc_health" not in imported


def test_kubernetes_ports_probes_and_annotations_match_the_command_line() -> None:
    [deployment] = load(DEPLOYMENT)
    got = params("kubernetes/deployment.yaml")
    box = container(DEPLOYMENT)
    ports = {port["name"]: port["containerPort"] for port in box["ports"]}
    assert ports == ports_of(got) == ports_of(params("Dockerfile ENTRYPOINT + CMD"))
    assert "--http-port" in serve_args("kubernetes/deployment.yaml")
    assert set(probes(box)) == {"startupProbe", "livenessProbe", "readinessProbe"}
    for name, probe in probes(box).items():
        [(kind, action)] = [(key, probe[key]) for key in ("httpGet", "grpc", "exec", "tcpSocket")
                            if key in probe]  # fmt: skip
        assert kind == "httpGet", name
        port = action["port"]
        assert (ports[port] if isinstance(port, str) else port) == http_port(got), name
        assert action.get("scheme", "HTTP") == ("HTTPS" if got["tls_cert"] else "HTTP"), name
    # Ready: every model; live: the process. A failed model makes the pod unready, not killed.
    assert box["readinessProbe"]["httpGet"]["path"] == READY
    assert box["livenessProbe"]["httpGet"]["path"] == LIVE
    assert box["startupProbe"]["httpGet"]["path"] == LIVE
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(got["metrics_port"])
    assert annotations["prometheus.io/path"] == "/metrics"


def test_service_reaches_both_container_ports_and_selects_the_pods() -> None:
    [deployment], [service] = load(DEPLOYMENT), load(SERVICE)
    got = params("kubernetes/deployment.yaml")
    named = {port["name"]: port["containerPort"] for port in container(DEPLOYMENT)["ports"]}
    targets = {}
    for port in service["spec"]["ports"]:
        target = port["targetPort"]
        targets[port["name"]] = named[target] if isinstance(target, str) else target
        assert port["port"] == targets[port["name"]], "same numbers outside and inside"
    assert targets == ports_of(got)
    assert {port["name"]: port.get("appProtocol") for port in service["spec"]["ports"]} == {
        "http": "http",
        "grpc": "kubernetes.io/h2c",
        "metrics": "http",
    }
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()


def test_kubernetes_security_context_matches_the_image() -> None:
    [deployment] = load(DEPLOYMENT)
    pod = deployment["spec"]["template"]["spec"]
    box = container(DEPLOYMENT)
    [user] = instruction("USER")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(user.partition(":")[0])
    assert box["securityContext"]["allowPrivilegeEscalation"] is False
    assert box["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # A read-only root file system holds only with --no-build: the server would otherwise
    # build missing or stale models into the repository.
    assert box["securityContext"]["readOnlyRootFilesystem"] is True
    assert params("kubernetes/deployment.yaml")["no_build"] is True
    assert "/tmp" in {mount["mountPath"] for mount in box["volumeMounts"]}


@pytest.mark.parametrize("path", [DEPLOYMENT, RUNTIME], ids=lambda path: path.name)
def test_onnx_runtime_threads_match_the_cpu_limit(path: Path) -> None:
    where = str(path.relative_to(DEPLOY))
    assert params(where)["threads"] == int(container(path)["resources"]["limits"]["cpu"])


def test_kserve_runtime_and_inferenceservice_fit_together() -> None:
    [runtime], [isvc] = load(RUNTIME), load(ISVC)
    spec = runtime["spec"]
    assert set(spec) <= SERVING_RUNTIME_SPEC_FIELDS, set(spec) - SERVING_RUNTIME_SPEC_FIELDS
    for model_format in spec["supportedModelFormats"]:
        assert set(model_format) <= SUPPORTED_MODEL_FORMAT_FIELDS
    # One port across all containers (Knative refuses more), so one protocol: gRPC, and no
    # HTTP/REST listener beside it that nothing declares or routes to.
    assert set(spec["protocolVersions"]) == {"grpc-v2"}
    box = container(RUNTIME)
    assert box["name"] == "kserve-container"  # the name KServe looks for
    got = params("kserve/servingruntime.yaml")
    assert got["repository"] == Path("/mnt/models")  # where KServe's storage initializer puts it
    assert got["no_build"] is True  # ... mounted read-only
    assert http_port(got) is None
    assert [port for each in spec["containers"] for port in each.get("ports", [])] == [
        {"name": "h2c", "containerPort": got["port"], "protocol": "TCP"}
    ]
    assert got["port"] == params("Dockerfile ENTRYPOINT + CMD")["port"]
    assert "ports" not in isvc["spec"]["predictor"]["model"]  # would add a second port
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(got["metrics_port"])
    assert spec["annotations"]["prometheus.kserve.io/path"] == "/metrics"

    predictor = isvc["spec"]["predictor"]
    assert set(predictor) <= PREDICTOR_FIELDS, set(predictor) - PREDICTOR_FIELDS
    model = predictor["model"]
    assert set(model) <= MODEL_SPEC_FIELDS, set(model) - MODEL_SPEC_FIELDS
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in set(spec["protocolVersions"]) & PROTOCOLS
    wanted = (model["modelFormat"]["name"], model["modelFormat"].get("version"))
    offered = {(f["name"], f.get("version")) for f in spec["supportedModelFormats"]}
    assert wanted in offered
    assert re.match(r"(s3|gs|pvc|https?|hdfs|webhdfs|oci|hf)://", model["storageUri"])


def test_dockerignore_keeps_what_the_image_needs() -> None:
    """deploy/dockerignore.example, and the root .dockerignore once there is one."""
    files = [DEPLOY / "dockerignore.example", REPO_ROOT / ".dockerignore"]
    for file in [file for file in files if file.is_file()]:
        rules = _dockerignore_rules(file)
        for needed in (
            "pyproject.toml",
            "README.md",
            "onnxforge/cli/__init__.py",
            "onnxforge/builder/spec.py",
            "onnxforge/server/app.py",
            "onnxforge/protocol/generated/inference_pb2.py",
            "models/digits-mlp/spec.yaml",
            "models/digits-mlp/weights.npz",
            "models/wide-mlp/spec.yaml",
        ):
            assert (REPO_ROOT / needed).is_file(), needed
            assert not _ignored(rules, needed), f"{file.name} drops {needed}"
        for dropped in (
            ".git/HEAD",
            "models/digits-mlp/1/model.onnx",
            "models/digits-mlp/config.pbtxt",
            "models/digits-mlp-int8-static/1/model.onnx",
            "onnxforge/server/__pycache__/app.cpython-311.pyc",
            "onnxforge.egg-info/PKG-INFO",
        ):
            assert _ignored(rules, dropped), f"{file.name} keeps {dropped}"


def _dockerignore_rules(file: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) per line, as Docker's pattern matcher reads them."""
    rules = []
    for raw in file.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = ""
        index = 0
        while index < len(pattern):
            char = pattern[index]
            if pattern.startswith("**/", index):
                regex, index = regex + "(.*/)?", index + 3
                continue
            if pattern.startswith("**", index):
                regex, index = regex + ".*", index + 2
                continue
            if char == "*":
                regex += "[^/]*"
            elif char == "?":
                regex += "[^/]"
            elif char == "[":
                end = pattern.index("]", index)
                regex += pattern[index : end + 1]
                index = end
            else:
                regex += re.escape(char)
            index += 1
        rules.append((not include, re.compile(regex)))
    return rules


def _ignored(rules: list[tuple[bool, re.Pattern[str]]], path: str) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for exclude, regex in rules:  # the last matching rule wins; a folder's rule covers its files
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = exclude
    return ignored


# ------------------------------------------------------------------------------ run for real


@pytest.fixture(scope="module")
def serve_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """``python -m onnxforge serve`` as the image runs it, HTTP/REST on a free port."""
    repository = _tiny_repository(tmp_path_factory.mktemp("deploy-process"))
    with ServeProcess(repository, http=True) as process:
        yield process


def _healthcheck_against(process: ServeProcess, modules: list[str] | None = None) -> int:
    assert process.http_port is not None
    return run_health_command(
        healthcheck_command(), f"127.0.0.1:{process.http_port}", modules=modules
    )


def test_healthcheck_exits_0_against_a_serving_server(serve_process: ServeProcess) -> None:
    modules: list[str] = []
    assert _healthcheck_against(serve_process, modules) == 0, serve_process.output[-2000:]
    # What it loaded, not only what it names, is in the image (the standard library here).
    allowed = runtime_modules(closure=True)
    assert modules and set(modules) <= allowed, set(modules) - allowed


def test_healthcheck_needs_no_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    repository = _tiny_repository(tmp_path / "repo")
    with ServeProcess(repository, "--auth-token-file", str(tokens), http=True) as process:
        assert _healthcheck_against(process) == 0, process.output[-2000:]


def test_healthcheck_exits_1_when_nothing_listens() -> None:
    assert run_health_command(healthcheck_command(), f"127.0.0.1:{free_port()}") == 1


def test_healthcheck_exits_1_when_a_model_failed_to_load(tmp_path: Path) -> None:
    repository = _broken_repository(tmp_path)
    with ServeProcess(repository, http=True) as process:
        assert _healthcheck_against(process) == 1, process.output[-2000:]


def test_probe_paths_are_ones_the_server_answers(served: ServerThread) -> None:
    box = container(DEPLOYMENT)
    paths = {probe["httpGet"]["path"] for probe in probes(box).values()}
    assert paths == {LIVE, READY}
    for path in paths:
        assert get(http_url(served, path)) == 200, path


def test_a_failed_model_makes_the_pod_unready_not_restarted(tmp_path: Path) -> None:
    repository = _broken_repository(tmp_path)
    server = ServerThread(
        Settings(repository=repository, port=0, metrics_port=None, http_port=0)
    ).start()
    box = container(DEPLOYMENT)
    try:
        for name, probe in probes(box).items():
            want = 400 if name == "readinessProbe" else 200
            assert get(http_url(server, probe["httpGet"]["path"])) == want, name
    finally:
        server.stop()


def test_grpc_probe_services_the_readme_names_are_serving(served: ServerThread) -> None:
    """deploy/README.md's alternative with --no-http: the kubelet's native gRPC probes."""
    text = README.read_text()
    services = {"inference.GRPCInferenceService", "onnxforge.Live"}
    assert all(f"service: {service}" in text for service in services)
    with grpc.insecure_channel(served.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in services | {""}:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service


def test_metrics_annotation_path_is_served(served: ServerThread) -> None:
    [deployment] = load(DEPLOYMENT)
    path = deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
    assert served.running is not None and served.running.metrics_port
    url = f"http://127.0.0.1:{served.running.metrics_port}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert "onnxforge_models_loaded" in response.read().decode()


def _tls_server(tmp_path: Path, mutual: bool) -> tuple[ServerThread, Path, Path, Path]:
    """A TLS server with HTTP on; the CA file, and a client certificate and key it signed."""
    ca, ca_key = make_ca(tmp_path, "deploy-ca")
    pair = issue(tmp_path, ca, ca_key, "server", server=True)  # names localhost, 127.0.0.1
    client = issue(tmp_path, ca, ca_key, "probe", server=False)
    security = Security(
        tls_cert=pair.cert, tls_key=pair.key, tls_client_ca=ca.cert if mutual else None
    )
    repository = _tiny_repository(tmp_path / "repo")
    settings = Settings(
        repository=repository, port=0, metrics_port=None, http_port=0, security=security
    )
    return ServerThread(settings).start(), ca.cert, client.cert, client.key


def test_readme_tls_probes_answer_over_https(tmp_path: Path) -> None:
    [block] = [block for block in readme_yaml_blocks() if "args" in block]
    assert "--tls-cert" in block["args"] and "--tls-client-ca" not in block["args"]
    assert params("README.md yaml block 0")["http_port"] == 8000
    server, _, _, _ = _tls_server(tmp_path, mutual=False)
    kubelet = _kubelet_tls()
    try:
        for name in ("startupProbe", "livenessProbe", "readinessProbe"):
            action = block[name]["httpGet"]
            assert action["scheme"] == "HTTPS" and action["port"] == "http", name
            url = http_url(server, action["path"], scheme="https")
            assert get(url, kubelet) == 200, name
        # ... and the image's plaintext HEALTHCHECK cannot talk to it, as the files say.
        assert server.running is not None
        address = f"127.0.0.1:{server.running.http_port}"
        assert run_health_command(healthcheck_command(), address) == 1
    finally:
        server.stop()


def test_readme_mutual_tls_probe_exits_0_against_a_mutual_tls_server(tmp_path: Path) -> None:
    [probe] = readme_exec_probes()
    server, ca, cert, key = _tls_server(tmp_path, mutual=True)
    assert server.running is not None
    address = f"127.0.0.1:{server.running.http_port}"
    replace = ((TLS_CA, str(ca)), (PROBE_CERT, str(cert)), (PROBE_KEY, str(key)))
    kubelet = _kubelet_tls()
    try:
        modules: list[str] = []
        assert run_health_command(probe, address, *replace, modules=modules) == 0
        assert set(modules) <= runtime_modules(closure=True)
        # Without a client certificate (the kubelet's httpGet) the handshake is refused.
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            get(http_url(server, READY, scheme="https"), kubelet)
    finally:
        server.stop()


def test_generated_config_pbtxt_parses_as_a_triton_model_config(served: ServerThread) -> None:
    """TRITON.md: the repository is Triton's. Checked with Triton's own ModelConfig message.

    tritonclient registers the same protobuf names as onnxforge.protocol.generated, so it
    is imported in a process of its own.
    """
    config = served.settings.repository / "tiny" / "config.pbtxt"
    assert (served.settings.repository / "tiny" / "1" / "model.onnx").is_file()
    code = (
        "import sys\n"
        "from google.protobuf import text_format\n"
        "from tritonclient.grpc import model_config_pb2\n"
        "config = text_format.Parse(open(sys.argv[1]).read(), model_config_pb2.ModelConfig())\n"
        "print(config.name, config.platform, config.max_batch_size,\n"
        "      config.dynamic_batching.max_queue_delay_microseconds,\n"
        "      config.version_policy.latest.num_versions)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["tiny", "onnxruntime_onnx", "8", "100", "1"]
