"""deploy/ checked without Docker or a cluster: parsed, held to the real CLI, health checks run.

Nothing here builds an image or applies a manifest. What can be checked on this machine is:
the files parse and name the right kinds; every ``onnxforge serve`` command line in them uses
flags that ``onnxforge serve --help`` lists and parses with the real click command; ports,
probes, annotations and the image's user agree with those command lines; and the health-check
commands, run exactly as written, answer correctly against a real server.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from onnxforge.cli import cli
from onnxforge.server.app import Settings
from onnxforge.server.security import Security
from tests.conftest import REPO_ROOT
from tests.server.certs import issue, make_ca
from tests.server.conftest import ServerThread

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

HEALTH_TARGET = "127.0.0.1:8001"  # what the image's HEALTHCHECK and the TLS probe dial
TLS_CA = "/var/run/secrets/onnxforge/tls/ca.crt"  # in deploy/README.md's TLS probe
TLS_NAME = "onnxforge.default.svc"  # its name override

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


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A real server that builds one small model from its spec, with metrics on."""
    repository = _tiny_repository(tmp_path_factory.mktemp("deploy-repo"))
    server = ServerThread(
        Settings(repository=repository, port=0, metrics_port=0, threads=1)
    ).start()
    yield server
    server.stop()


def run_health_command(argv: list[str], address: str, *replace: tuple[str, str]) -> int:
    """Run a health-check command as written, dialing ``address`` instead of 127.0.0.1:8001."""
    assert argv[:2] == ["python", "-c"], argv
    code = argv[2]
    assert HEALTH_TARGET in code, code
    code = code.replace(HEALTH_TARGET, address)
    for old, new in replace:
        assert old in code, old
        code = code.replace(old, new)
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env
    )
    return result.returncode


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


def test_dockerfile_runs_as_a_numeric_non_root_user_and_exposes_both_ports() -> None:
    [user] = instruction("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can verify it"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    entry = params("Dockerfile ENTRYPOINT + CMD")
    exposed = {int(port.split("/")[0]) for line in instruction("EXPOSE") for port in line.split()}
    assert exposed == {entry["port"], entry["metrics_port"]} == {8001, 8002}
    assert entry["repository"] == Path("/models")


def test_dockerfile_healthcheck_dials_the_served_port() -> None:
    entry = params("Dockerfile ENTRYPOINT + CMD")
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert f"127.0.0.1:{entry['port']}" in command[2]
    assert "service=''" in command[2]


def test_kubernetes_ports_probes_and_annotations_match_the_command_line() -> None:
    [deployment] = load(DEPLOYMENT)
    got = params("kubernetes/deployment.yaml")
    box = container(DEPLOYMENT)
    ports = {port["name"]: port["containerPort"] for port in box["ports"]}
    assert ports == {"grpc": got["port"], "metrics": got["metrics_port"]}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert box[probe]["grpc"]["port"] == got["port"], probe
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
    assert targets == {"grpc": got["port"], "metrics": got["metrics_port"]}
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
    assert set(spec["protocolVersions"]) == {"grpc-v2"}  # onnxforge speaks no REST
    box = container(RUNTIME)
    assert box["name"] == "kserve-container"  # the name KServe looks for
    got = params("kserve/servingruntime.yaml")
    assert got["repository"] == Path("/mnt/models")  # where KServe's storage initializer puts it
    assert got["no_build"] is True  # ... mounted read-only
    assert box["ports"] == [{"name": "h2c", "containerPort": got["port"], "protocol": "TCP"}]
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


def test_healthcheck_exits_0_against_a_serving_server(served: ServerThread) -> None:
    assert run_health_command(healthcheck_command(), served.address) == 0


def test_healthcheck_exits_non_zero_when_nothing_listens() -> None:
    assert run_health_command(healthcheck_command(), f"127.0.0.1:{free_port()}") != 0


def test_healthcheck_exits_non_zero_when_a_model_failed_to_load(tmp_path: Path) -> None:
    repository = _tiny_repository(tmp_path)
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    server = ServerThread(Settings(repository=repository, port=0, metrics_port=None)).start()
    try:
        assert run_health_command(healthcheck_command(), server.address) == 1
    finally:
        server.stop()


def test_probe_services_are_ones_the_server_answers(served: ServerThread) -> None:
    box = container(DEPLOYMENT)
    services = {box[probe]["grpc"]["service"] for probe in box if probe.endswith("Probe")}
    assert services == {"", "inference.GRPCInferenceService", "onnxforge.Live"}
    with grpc.insecure_channel(served.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in services:
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


def test_readme_tls_probe_exits_0_against_a_tls_server(tmp_path: Path) -> None:
    [probe] = [
        block["readinessProbe"]["exec"]["command"]
        for block in readme_yaml_blocks()
        if "readinessProbe" in block
    ]
    ca, ca_key = make_ca(tmp_path, "deploy-ca")
    pair = issue(tmp_path, ca, ca_key, "server", server=True)  # names localhost, 127.0.0.1
    repository = _tiny_repository(tmp_path / "repo")
    security = Security(tls_cert=pair.cert, tls_key=pair.key)
    server = ServerThread(
        Settings(repository=repository, port=0, metrics_port=None, security=security)
    ).start()
    replace = ((TLS_CA, str(ca.cert)), (TLS_NAME, "localhost"))
    try:
        assert run_health_command(probe, server.address, *replace) == 0
        # ... and the plaintext HEALTHCHECK cannot talk to a TLS server, as the README says.
        assert run_health_command(healthcheck_command(), server.address) != 0
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
