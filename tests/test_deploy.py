"""deploy/: the systemd unit verifies, the YAML parses with the settings that make pools shareable."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import tomllib
from pathlib import Path

import yaml

from fastalloc_shmd import config as daemon_config

from . import requirements

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNIT = DEPLOY / "fastalloc-shmd.service"


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values]}}: systemd allows a key more than once."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}:{number}: not 'Key=value' inside a section: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_file_declares_what_the_daemon_needs():
    unit = read_unit(UNIT)
    service = unit["Service"]
    assert service["Type"] == ["notify"]
    assert service["RuntimeDirectory"] == ["fastalloc-shm"]
    assert "fastalloc-shmd" in service["ExecStart"][0] and "/run/fastalloc-shm/control.sock" in service["ExecStart"][0]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["User"] == ["fastalloc"], "a dedicated system user (RemoveIPC=yes spares system users)"
    assert "DynamicUser" not in service, "DynamicUser= implies RemoveIPC=yes: pools would be deleted at stop"
    assert "/dev/shm" in service["ReadWritePaths"]
    assert service.get("PrivateIPC", ["no"]) == ["no"]
    assert "ProtectProc" not in service and "ProcSubset" not in service, "the monitor must see client processes"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_file_is_accepted_by_configparser():
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNIT)
    assert parser["Service"]["Type"] == "notify"


@requirements.needs_tool("systemd-analyze")
def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    # verify checks that ExecStart's binary exists: point it at one that does on this machine.
    text = UNIT.read_text().replace("/usr/local/bin/fastalloc-shmd", shutil.which("true"))
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True,
                            timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Unknown" not in output and "Failed" not in output and "Invalid" not in output, output


def test_compose_shares_ipc_pid_and_sizes_shm():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    daemon, worker = compose["services"]["fastalloc"], compose["services"]["worker"]
    assert daemon["ipc"] == "shareable" and daemon["shm_size"]
    assert worker["ipc"] == "service:fastalloc" and worker["pid"] == "service:fastalloc"
    assert daemon["build"]["dockerfile"] == "deploy/Dockerfile"
    socket_volume = "control:/run/fastalloc-shm"
    assert socket_volume in daemon["volumes"] and socket_volume in worker["volumes"]


def test_kubernetes_mounts_a_memory_emptydir_at_dev_shm_in_every_container():
    documents = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text())}
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    assert pod["shareProcessNamespace"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    shm = [name for name, v in volumes.items() if v.get("emptyDir", {}).get("medium") == "Memory"]
    assert len(shm) == 1
    containers = pod["containers"] + pod["initContainers"]
    for container in containers:
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts.get("/dev/shm") == shm[0], container["name"]
    sidecar = next(c for c in pod["initContainers"] if c["name"] == "fastalloc-shmd")
    assert sidecar["restartPolicy"] == "Always", "a native sidecar"
    pools = documents["ConfigMap"]["data"]["pools.toml"]
    assert daemon_config.parse(tomllib.loads(pools), "configmap").pools


def test_dockerfile_runs_the_daemon_as_a_fixed_system_user():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "useradd --system --uid 10001" in text and "\nUSER fastalloc\n" in text
    assert 'ENTRYPOINT ["fastalloc-shmd"' in text and "STOPSIGNAL SIGTERM" in text


def test_example_pools_toml_is_a_valid_config():
    pools = daemon_config.load(str(DEPLOY / "pools.toml")).pools
    assert {spec.kind for spec in pools.values()} == {"fixed", "growing", "threadlocal", "threadsafe"}
