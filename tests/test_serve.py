"""The way the README runs the gateway: `gunicorn wsgi:app` with gunicorn.conf.py and the
configuration named by GATEWAY_CONFIG, here the default demo configuration in a temporary folder."""

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.harness import samples
from tests.harness.ports import free_port
from tests.harness.procs import stop_process

ROOT = Path(__file__).resolve().parents[1]


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass  # not listening yet, or workers still booting behind an accepted connection
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "gunicorn did not become ready"
        time.sleep(0.1)


def demo_config(tmp_path: Path) -> str:
    """The default configuration, with its demo archive in `tmp_path`."""
    config = (ROOT / "config" / "gateway.yml").read_text().replace("var/demo", str(tmp_path / "demo"))
    (tmp_path / "gateway.yml").write_text(config)
    return str(tmp_path / "gateway.yml")


def test_gunicorn_serves_the_demo_archive(tmp_path):
    port = free_port()
    home = tmp_path / "home"  # where gunicorn would put its control socket by default
    env = {**{k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"},
           "GATEWAY_CONFIG": demo_config(tmp_path), "HOME": str(home),
           "GATEWAY_BIND": f"127.0.0.1:{port}", "GATEWAY_WORKERS": "2"}
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/healthz", proc, log)
        r = requests.get(f"{base}/dicomweb/studies", timeout=10)
        assert r.status_code == 200
        assert r.headers["Content-Type"] == "application/dicom+json"
        assert sorted(d["0020000D"]["Value"][0] for d in r.json()) == samples.studies()
        ready = requests.get(f"{base}/readyz", timeout=10)
        assert ready.json() == {"ready": True, "connectors": {"demo": "ok"}}
        # no control socket at gunicorn's per-user default path, which a second gateway on
        # the host would share (and remove when it stops)
        assert not (home / ".gunicorn").exists()
        # a search by 100 UIDs of 64 characters: a 6.6 kB request line (gunicorn's default
        # limit is 4094 bytes), the study asked for among 99 unknown ones
        study = samples.studies()[0]
        uids = [study] + [f"1.2.826.0.1.3680043.10.1{n:03d}." + "9" * 35 for n in range(99)]
        assert all(len(u) <= 64 for u in uids)
        r = requests.get(f"{base}/dicomweb/studies", params={"StudyInstanceUID": ",".join(uids)},
                         timeout=10)
        assert len(r.request.url) > 6400
        assert r.status_code == 200, r.text
        assert [d["0020000D"]["Value"][0] for d in r.json()] == [study]
    finally:
        stop_process(proc)


def test_a_bad_configuration_stops_gunicorn_with_the_key_paths(tmp_path):
    # an unknown key and an out-of-range port: gunicorn exits (it does not respawn workers
    # forever), and its log names each key path and what is wrong, without a traceback
    (tmp_path / "gateway.yml").write_text(
        "connector:\n"
        "  config:\n"
        "    pacs:\n"
        "      type: DICOM\n"
        "      dicom-connector:\n"
        "        dimse: {calling-aet: GW, aet: PACS, host: 127.0.0.1, port: 70000}\n"
        "      colour: blue\n")
    env = {**os.environ, "GATEWAY_CONFIG": str(tmp_path / "gateway.yml"),
           "GATEWAY_BIND": f"127.0.0.1:{free_port()}", "GATEWAY_WORKERS": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT, env=env, capture_output=True, timeout=60)
    log = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode != 0
    assert "configuration error" in log
    assert "connector.config.pacs.colour: Unknown key." in log
    assert ("connector.config.pacs.dicom-connector.dimse.port: Must be greater than or equal to 1"
            " and less than or equal to 65535.") in log
    assert "Traceback" not in log


def test_what_start_up_built_is_out_of_the_collectors_way(tmp_path):
    # gc.freeze() after the app is built: a full collection during a request then walks only
    # what requests made, not the ~90,000 objects of the imports and the connectors
    env = {**os.environ, "GATEWAY_CONFIG": demo_config(tmp_path)}
    probe = "import gc, wsgi; print(gc.get_freeze_count(), len(gc.get_objects()))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True,
                         timeout=120, check=True).stdout.split()
    frozen, tracked = int(out[0]), int(out[1])
    assert frozen > 50_000
    assert tracked < 1_000


def test_python_m_gateway_config_checks_a_file(tmp_path):
    # the check gunicorn runs before any worker: 0 for a usable file, 3 and the key paths else
    def check(path: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.config"], cwd=ROOT, timeout=120,
                              env={**os.environ, "GATEWAY_CONFIG": path}, capture_output=True,
                              text=True)

    good = check(demo_config(tmp_path))
    assert (good.returncode, good.stderr) == (0, "")
    (tmp_path / "bad.yml").write_text("connector:\n  colour: blue\n")
    bad = check(str(tmp_path / "bad.yml"))
    assert bad.returncode == 3
    assert bad.stderr == "configuration error:\nconnector.colour: Unknown key.\n"
