"""The cluster configs in cluster/ stay valid and in step with the code.

- the Ray cluster launcher config passes Ray's own config validation (the schema shipped in
  the installed ray package), and has the node groups, bounds and token setup it promises;
- every KubeRay / Kubernetes manifest parses, with the kinds, API versions, Ray version,
  image, resources, Secrets and token authentication the README describes;
- every command that runs a job (RayJob entrypoints, the CronJob script, the README's
  commands) names an existing jobs/*.py, every flag it passes appears in that job's
  `--help`, and the job's own parser accepts the whole argument list;
- the container recipe builds on the Ray version pyproject.toml pins.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest
import yaml

from conftest import REPO, free_port, wait_for_dashboard

CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHER = CLUSTER / "aws.yaml"
DOCKERFILE = CLUSTER / "Dockerfile"
README = CLUSTER / "README.md"
IMAGE_REPO_DIR = "/home/ray/mgc"  # where the Dockerfile puts the checkout
BIN = Path(sys.executable).parent

TOKEN_SECRET = ("mgc-ray-token", "auth_token")
S3_SECRET = "mgc-s3"
KINDS = {
    "raycluster.yaml": ("ray.io/v1", "RayCluster"),
    "rayjob-train.yaml": ("ray.io/v1", "RayJob"),
    "cronjob-tag-nightly.yaml": ("batch/v1", "CronJob"),
    "raycronjob-tag-nightly.yaml": ("ray.io/v1", "RayCronJob"),
}


@cache
def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


@cache
def ray_version() -> str:
    pins = [re.fullmatch(r"ray\[[^\]]*\]==([\w.]+)", dep) for dep in project()["dependencies"]]
    (version,) = [pin.group(1) for pin in pins if pin]
    return version


def launcher() -> dict:
    return yaml.safe_load(LAUNCHER.read_text())


@cache
def manifests() -> dict[str, dict]:
    out = {}
    for path in sorted(KUBERAY.glob("*.yaml")):
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        assert len(docs) == 1, f"{path.name}: one object per file"
        out[path.name] = docs[0]
    return out


def cluster_specs() -> list[tuple[str, dict]]:
    """Every RayClusterSpec: a RayCluster's spec, a RayJob's and a RayCronJob's rayClusterSpec."""
    specs = []
    for name, doc in manifests().items():
        if doc["kind"] == "RayCluster":
            specs.append((name, doc["spec"]))
        elif doc["kind"] == "RayJob":
            specs.append((name, doc["spec"]["rayClusterSpec"]))
        elif doc["kind"] == "RayCronJob":
            specs.append((name, doc["spec"]["jobTemplate"]["rayClusterSpec"]))
    return specs


def ray_containers(spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(group, c) for group, g in groups for c in g["template"]["spec"]["containers"]]


def all_containers() -> list[tuple[str, dict]]:
    """(where, container) for every container of every manifest."""
    out = [(f"{name}:{group}", c) for name, spec in cluster_specs() for group, c in ray_containers(spec)]
    for name, doc in manifests().items():
        if doc["kind"] == "CronJob":
            out += [(name, c) for c in doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]]
    return out


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def has_token_env(env: list[dict] | dict) -> bool:
    env = env if isinstance(env, dict) else {e["name"]: e for e in env}
    mode = env.get("RAY_AUTH_MODE", {}).get("value")
    ref = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
    return mode == "token" and (ref.get("name"), ref.get("key")) == TOKEN_SECRET


# ------------------------------------------------------------------ cluster launcher


def test_launcher_config_passes_rays_own_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(launcher()))  # fills Ray's AWS defaults, as `ray up` does
    validate_config(prepared)  # jsonschema against ray/autoscaler/ray-schema.json, then Ray's checks


@pytest.mark.parametrize("mutate", [
    lambda c: c.update(max_workerz=3),  # a typo at the top level
    lambda c: c["available_node_types"]["cpu-decode"].update(min_wokers=1),  # a typo in a node type
    lambda c: c["available_node_types"]["gpu-train-tag"].pop("resources"),
    lambda c: c["docker"].update(imagee="x"),
])
def test_launcher_validation_would_catch_mistakes(mutate) -> None:
    """The check above has teeth: Ray's schema refuses unknown or missing keys."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = launcher()
    mutate(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_config(prepare_config(config))


def test_launcher_has_a_cpu_decode_group_and_a_gpu_group_with_bounds() -> None:
    config = launcher()
    types = config["available_node_types"]
    assert config["head_node_type"] in types and config["provider"]["type"] == "aws"
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu = {n for n, t in workers.items() if re.match(r"(g|p)\d", t["node_config"]["InstanceType"])}
    cpu = set(workers) - gpu
    assert gpu and cpu, workers
    for name, node_type in workers.items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"], name
    assert config["idle_timeout_minutes"] > 0
    # The head runs no tasks, so work lands on the groups above.
    assert "--num-cpus=0" in " ".join(config["head_start_ray_commands"])


def test_launcher_installs_mgc_everywhere_and_carries_the_token() -> None:
    config = launcher()
    assert config["docker"]["image"] == the_image()  # mgc is in the image every node runs
    assert "worker_image" not in config["docker"] and "head_image" not in config["docker"]
    for node_type in config["available_node_types"].values():
        assert "worker_image" not in node_type.get("docker", {})
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token ray start" in command, command


# ------------------------------------------------------------------ KubeRay manifests


def test_every_manifest_parses_with_the_expected_kind() -> None:
    docs = manifests()
    assert set(docs) == set(KINDS), "a new manifest? add it to KINDS (and to cluster/README.md)"
    for name, doc in docs.items():
        assert (doc["apiVersion"], doc["kind"]) == KINDS[name], name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), name
        assert name in README.read_text(), f"{name} is not documented in cluster/README.md"


def test_ray_cluster_specs_match_the_pinned_ray_and_have_cpu_and_gpu_groups() -> None:
    assert len(cluster_specs()) == 3
    for name, spec in cluster_specs():
        assert spec["rayVersion"] == ray_version(), name
        assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0", name
        assert spec.get("enableInTreeAutoscaling") is True, name
        gpu_groups = []
        for group in spec["workerGroupSpecs"]:
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], (name, group["groupName"])
            assert all(isinstance(v, str) for v in group["rayStartParams"].values()), (name, group["groupName"])
            (container,) = group["template"]["spec"]["containers"]
            if "nvidia.com/gpu" in container["resources"]["limits"]:
                gpu_groups.append(group["groupName"])
        assert gpu_groups and len(gpu_groups) < len(spec["workerGroupSpecs"]), name
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert {p["name"]: p["containerPort"] for p in head["ports"]}["dashboard"] == 8265, name


def test_every_container_has_the_image_and_resource_requests_and_limits() -> None:
    for where, container in all_containers():
        assert container["image"] == the_image(), where
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (where, kind)
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert limits.get("nvidia.com/gpu") == requests.get("nvidia.com/gpu"), where


def test_s3_credentials_come_from_a_secret_on_every_ray_container_and_nowhere_literal() -> None:
    for name, spec in cluster_specs():
        for group, container in ray_containers(spec):
            refs = [e.get("secretRef", {}).get("name") for e in container.get("envFrom", [])]
            assert S3_SECRET in refs, (name, group)
    secretish = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY", re.I)
    for where, container in all_containers():
        for var in container.get("env", []):
            if secretish.search(var["name"]):
                assert "value" not in var and "valueFrom" in var, (where, var["name"])
    text = "".join(p.read_text() for p in [LAUNCHER, *KUBERAY.glob("*.yaml")])
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)  # an access key id
    assert not re.search(r"(?im)^[^#\n]*(secret_access_key|auth_token)\s*[:=]\s*['\"]?\w", text)
    assert "kind: Secret" not in text  # Secrets are created by the operator, not shipped


def test_token_authentication_is_configured_everywhere() -> None:
    """Ray 2.60 refuses clients without the token (docs/architecture.md, "Seen on these machines")."""
    for name, doc in manifests().items():
        if doc["kind"] == "RayCluster":  # by hand, from our Secret, so outside clients know it
            for group, container in ray_containers(doc["spec"]):
                assert has_token_env(env_of(container)), (name, group)
            assert has_token_env(doc["spec"]["autoscalerOptions"]["env"]), f"{name}: autoscaler sidecar"
        elif doc["kind"] in ("RayJob", "RayCronJob"):  # KubeRay >= 1.5.1 generates and injects it
            spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]["jobTemplate"]["rayClusterSpec"]
            assert spec["authOptions"] == {"mode": "token"}, name
        elif doc["kind"] == "CronJob":
            for container in doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]:
                assert has_token_env(env_of(container)), name
    readme = README.read_text()
    for secret in (TOKEN_SECRET[0], S3_SECRET):
        assert f"kubectl create secret generic {secret}" in readme, secret
    assert f"--from-literal={TOKEN_SECRET[1]}=" in readme


def test_ray_jobs_clean_up_after_themselves() -> None:
    for name, doc in manifests().items():
        if doc["kind"] not in ("RayJob", "RayCronJob"):
            continue
        spec = doc["spec"] if doc["kind"] == "RayJob" else doc["spec"]["jobTemplate"]
        assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0, name
        assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode"), name
        assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict), name
        assert spec["activeDeadlineSeconds"] > 0, name


def test_nightly_tagging_is_scheduled_and_writes_to_a_dated_prefix() -> None:
    cron = re.compile(r"^(\S+\s+){4}\S+$")
    docs = manifests()
    cronjob, raycron = docs["cronjob-tag-nightly.yaml"], docs["raycronjob-tag-nightly.yaml"]
    assert cron.match(cronjob["spec"]["schedule"]) and cron.match(raycron["spec"]["schedule"])
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] == "Never"

    # The CronJob submits to raycluster.yaml's head service, dashboard port.
    script = cronjob_script(cronjob)
    cluster_name = docs["raycluster.yaml"]["metadata"]["name"]
    assert f"--address http://{cluster_name}-head-svc:8265" in script
    for source, command in [("CronJob", script), ("RayCronJob", raycron["spec"]["jobTemplate"]["entrypoint"])]:
        (invocation,) = job_invocations(command)
        assert invocation.script == "jobs/tag.py", source
        output = invocation.value("--output")
        assert re.search(r"/dt=(\$\(date -u \+%Y-%m-%d\)|\$\{day\})$", output), (source, output)
        if "${day}" in output:
            assert 'day="$(date -u +%Y-%m-%d)"' in script


# ---------------------------------------------------------------- container recipe


def test_dockerfile_builds_on_the_pinned_ray_and_python_and_installs_mgc() -> None:
    text = DOCKERFILE.read_text()
    (base,) = re.findall(r"^ARG RAY_IMAGE=(\S+)$", text, re.M)
    match = re.fullmatch(r"rayproject/ray:([\d.]+)-py(\d)(\d+)-(gpu|cu\d+)", base)
    assert match, base
    assert match.group(1) == ray_version()
    assert (int(match.group(2)), int(match.group(3))) == (3, 11)
    assert re.search(r"^FROM \$\{RAY_IMAGE\}$", text, re.M)
    assert re.search(rf"^WORKDIR {re.escape(IMAGE_REPO_DIR)}$", text, re.M)
    for part in ("pyproject.toml", "README.md", "mgc", "jobs"):
        assert re.search(rf"^COPY .*\b{re.escape(part)}\b", text, re.M), part
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", text)
    assert f"ray.__version__ == '{ray_version()}'" in text
    ignore = [line.strip() for line in (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*" and "!mgc/" in ignore and "!jobs/" in ignore and "!.venv" not in ignore


def the_image() -> str:
    """The one image every node and pod runs: <registry>/mgc:<project version>."""
    images = {launcher()["docker"]["image"]} | {c["image"] for _, c in all_containers()}
    assert len(images) == 1, f"several images in cluster/: {images}"
    (image,) = images
    assert image.rsplit("/", 1)[-1] == f"mgc:{project()['version']}", image
    return image


def test_one_image_everywhere_tagged_with_the_project_version() -> None:
    registry, _ = the_image().rsplit("/", 1)
    readme = README.read_text()
    assert f"REGISTRY={registry}" in readme
    assert f"docker build -f cluster/Dockerfile -t $REGISTRY/mgc:{project()['version']} ." in readme


# ------------------------------------------------------- entrypoints match the jobs


class Invocation:
    def __init__(self, source: str, script: str, args: list[str]):
        self.source, self.script, self.args = source, script, args

    def value(self, flag: str) -> str:
        return self.args[self.args.index(flag) + 1]

    def __repr__(self) -> str:
        return f"{self.source}: python {self.script} {' '.join(self.args)}"


SEPARATORS = {";", "&&", "||", "|", "&"}


def job_invocations(text: str, source: str = "") -> list[Invocation]:
    """Every `python .../jobs/X.py ARGS` in shell text (continuations joined, one line at a time)."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        tokens = list(lexer)
        for i, token in enumerate(tokens[:-1]):
            if Path(token).name in ("python", "python3") and tokens[i + 1].endswith(".py"):
                script = tokens[i + 1]
                args = []
                for arg in tokens[i + 2:]:
                    if arg in SEPARATORS:
                        break
                    args.append(arg)
                if script.startswith(IMAGE_REPO_DIR + "/"):
                    script = script[len(IMAGE_REPO_DIR) + 1:]
                found.append(Invocation(source, script, args))
    return found


def cronjob_script(doc: dict) -> str:
    (container,) = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["/bin/bash", "-c"]
    return "\n".join(container["args"])


def readme_blocks() -> str:
    return "\n".join(re.findall(r"```bash\n(.*?)```", README.read_text(), re.S))


def all_invocations() -> list[Invocation]:
    out = []
    for name, doc in manifests().items():
        if doc["kind"] == "RayJob":
            out += job_invocations(doc["spec"]["entrypoint"], name)
        elif doc["kind"] == "RayCronJob":
            out += job_invocations(doc["spec"]["jobTemplate"]["entrypoint"], name)
        elif doc["kind"] == "CronJob":
            out += job_invocations(cronjob_script(doc), name)
    out += job_invocations(readme_blocks(), "cluster/README.md")
    return out


def help_key(invocation: Invocation) -> tuple[str, ...]:
    if invocation.script.endswith("build_manifest.py"):  # sub-commands have their own flags
        return (invocation.script, invocation.args[0])
    return (invocation.script,)


@pytest.fixture(scope="module")
def help_texts() -> dict[tuple[str, ...], str]:
    """`python jobs/X.py [sub-command] --help` for every job the configs run (in parallel)."""
    keys = sorted({help_key(inv) for inv in all_invocations()})
    keys.append(("ray job submit",))

    def run(key: tuple[str, ...]) -> str:
        argv = [str(BIN / "ray"), "job", "submit"] if key == ("ray job submit",) else [sys.executable, *key]
        done = subprocess.run([*argv, "--help"], cwd=REPO, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(keys, pool.map(run, keys)))


def flags_in(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", help_text))


def test_the_configs_run_every_job_that_users_run_on_a_cluster() -> None:
    scripts = {inv.script for inv in all_invocations()}
    assert {"jobs/train.py", "jobs/tag.py", "jobs/build_manifest.py"} <= scripts, scripts
    sources = {inv.source for inv in all_invocations()}
    assert {"rayjob-train.yaml", "cronjob-tag-nightly.yaml", "raycronjob-tag-nightly.yaml", "cluster/README.md"} <= sources


@pytest.mark.slow  # each `--help` imports torch and Ray: ~15 s apiece on the 2-core CI machine
def test_every_entrypoint_names_an_existing_job_and_only_flags_it_accepts(help_texts) -> None:
    for invocation in all_invocations():
        assert (REPO / invocation.script).is_file(), invocation
        accepted = flags_in(help_texts[help_key(invocation)])
        assert accepted, invocation
        unknown = [arg.split("=", 1)[0] for arg in invocation.args
                   if arg.startswith("--") and arg.split("=", 1)[0] not in accepted]
        assert not unknown, f"{invocation}: {unknown} not in `{' '.join(help_key(invocation))} --help`"


def test_every_entrypoint_parses_with_the_jobs_own_parser() -> None:
    """The same parsers `--help` prints, in-process (fast), and values too: `--concurrency
    four` would pass a flag check, not this one."""
    from mgc.cli import tag_parser, train_parser

    spec = importlib.util.spec_from_file_location("build_manifest_job", REPO / "jobs" / "build_manifest.py")
    build_manifest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_manifest)
    parsers = {"jobs/train.py": train_parser, "jobs/tag.py": tag_parser, "jobs/build_manifest.py": build_manifest.parser}
    for invocation in all_invocations():
        assert (REPO / invocation.script).is_file(), invocation
        try:
            parsers[invocation.script]().parse_args(invocation.args)
        except SystemExit:
            pytest.fail(f"{invocation}: refused by the job's argument parser")


@pytest.mark.slow
def test_ray_job_submit_commands_use_real_flags(help_texts) -> None:
    accepted = flags_in(help_texts[("ray job submit",)])
    texts = {"cluster/README.md": readme_blocks(),
             "cronjob-tag-nightly.yaml": cronjob_script(manifests()["cronjob-tag-nightly.yaml"])}
    seen = 0
    for source, text in texts.items():
        for line in text.replace("\\\n", " ").splitlines():
            if "ray job submit" not in line:
                continue
            seen += 1
            submit = line.split("ray job submit", 1)[1].split(" -- ", 1)[0]
            flags = [t.split("=", 1)[0] for t in shlex.split(submit) if t.startswith("--")]
            assert flags and set(flags) <= accepted, (source, set(flags) - accepted)
            assert "--address" in flags, (source, line)
    assert seen >= 4


def test_job_invocation_parser() -> None:
    text = 'set -e\nday="$(date -u +%F)"\nray job submit --address x -- \\\n  python /home/ray/mgc/jobs/tag.py --a 1 \\\n  --output "s3://b/dt=${day}" ; echo done'
    (inv,) = job_invocations(text)
    assert inv.script == "jobs/tag.py" and inv.args == ["--a", "1", "--output", "s3://b/dt=${day}"]
    assert job_invocations("python3 jobs/train.py --epochs 2 && python jobs/tag.py")[1].args == []


# ------------------------------------------------- the token mechanism the configs use




@pytest.mark.slow
def test_token_from_the_environment_is_how_clients_get_in(tmp_path) -> None:
    """What the KubeRay manifests do (RAY_AUTH_MODE=token + RAY_AUTH_TOKEN on the head) and what
    cluster/README.md tells clients to do (the same two variables) works; a client without
    the mode, or with another token, is refused."""
    token = f"mgc-test-{os.getpid()}-{time.time_ns()}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    base["PATH"] = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    cluster_env = {**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    dashboard = free_port()
    temp_dir = f"/tmp/mgctok-{os.getpid()}"
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "1", "--port", str(free_port()),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         # Fixed default ports (agent 52365, client 10001, ...) clash with other Ray instances
         # on a shared machine, and a head whose agent cannot bind takes no jobs.
         *[arg for flag in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                            "--ray-client-server-port", "--metrics-export-port", "--runtime-env-agent-port")
           for arg in (flag, str(free_port()))],
         "--temp-dir", temp_dir, "--disable-usage-stats"],
        env=cluster_env, stdout=open(tmp_path / "head.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{dashboard}"

    def submit(env: dict) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ray"), "job", "submit", "--address", url, "--", "echo", "mgc-token-ok"],
                              env=env, capture_output=True, text=True, timeout=120)

    try:
        wait_for_dashboard(url, head)
        deadline = time.time() + 120
        while True:  # the dashboard answers before its job agent is up, on a busy machine
            good = submit({**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
            if "No available agent" not in good.stderr or time.time() > deadline:
                break
            time.sleep(2)
        assert good.returncode == 0 and "mgc-token-ok" in good.stdout + good.stderr, good.stderr[-2000:]
        wrong = submit({**base, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "not-the-token"})
        assert wrong.returncode != 0 and "invalid or incorrect" in wrong.stdout + wrong.stderr
        no_mode = submit({**base, "RAY_AUTH_TOKEN": token})
        assert no_mode.returncode != 0 and "RAY_AUTH_MODE" in no_mode.stdout + no_mode.stderr
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)
