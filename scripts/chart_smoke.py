#!/usr/bin/env python3
"""Runs the real binaries with the configuration a rendered chart gives them, for
scripts/check-chart.sh: what no schema can check is whether `offpeak serve`, `offpeak-agent` and
`offpeak-operator` accept the chart's flags, environment and files.

  chart_smoke.py --manifests RENDERED.yaml --bin target/debug

From the rendered objects it takes the ConfigMap files and each container's command, args and
environment; paths inside the containers are mapped to a temporary folder, listen addresses to
free loopback ports, the agents' scheduler address to the local scheduler, and the kubelet's
pod-resources socket (there is no kubelet here) is left out. Then:
  1. the scheduler starts and answers /healthz and /readyz;
  2. each agent starts, registers and has samples accepted (the scheduler's metrics say so),
     and exits cleanly on SIGINT, the image's stop signal;
  3. the operator parses its flags (it needs a Kubernetes API to run further);
  4. the scheduler exits cleanly on SIGINT.
Exits 1 with the failing step and the process's output.
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

# Generous bounds for a debug build on a busy 2-core machine; each step usually takes < 2 s.
START_TIMEOUT_S = 30
SAMPLES_TIMEOUT_S = 30
STOP_TIMEOUT_S = 15

# In-container paths the chart uses, and the sub-folder of the temporary folder each maps to.
PATHS = {"/etc/offpeak": "etc", "/var/lib/offpeak-agent": "agent", "/var/lib/offpeak": "data"}
POD_RESOURCES_ENV = "OFFPEAK_AGENT_POD_RESOURCES_SOCKET"


def fail(step, message, log=None):
    print(f"ERROR chart smoke test, {step}: {message}", file=sys.stderr)
    if log:
        with open(log, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-4000:]
        print(f"--- its output (last 4000 characters):\n{tail}", file=sys.stderr)
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def containers(manifests):
    """{workload name: (command, args, env)} and the ConfigMap files, from a rendered chart."""
    with open(manifests, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    found, files = {}, {}
    for d in docs:
        if d["kind"] == "ConfigMap":
            files.update(d.get("data") or {})
        if d["kind"] in ("Deployment", "DaemonSet"):
            (c,) = d["spec"]["template"]["spec"]["containers"]
            env = {}
            for e in c.get("env", []):
                if "value" in e:
                    env[e["name"]] = e["value"]
                elif e["name"] != "NODE_NAME":
                    fail("reading the render", f"{d['metadata']['name']}: env {e['name']} comes from "
                         "a Secret or field this test cannot provide")
            found[d["metadata"]["name"]] = (c["command"], c.get("args", []), env)
    return found, files


def localise(value, root):
    for inside, sub in PATHS.items():
        value = value.replace(inside, os.path.join(root, sub))
    return value


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except OSError:
        return None, ""


def wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return False


def start(command, args, env, log, binaries):
    exe = os.path.join(binaries, command[0])
    if not os.access(exe, os.X_OK):
        fail("starting", f"{exe} is not built (cargo build --bins)")
    with open(log, "w", encoding="utf-8") as out:
        return subprocess.Popen([exe, *command[1:], *args], env={**os.environ, **env},
                                stdout=out, stderr=subprocess.STDOUT)


def stop(proc, step, log):
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        fail(step, f"did not stop within {STOP_TIMEOUT_S} s of SIGINT", log)
    if code != 0:
        fail(step, f"exited with status {code} on SIGINT", log)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifests", required=True)
    parser.add_argument("--bin", required=True, help="folder with offpeak, offpeak-agent, offpeak-operator")
    args = parser.parse_args()
    workloads, files = containers(args.manifests)
    schedulers = [n for n in workloads if n.endswith("-scheduler")]
    agents = [n for n in workloads if "-agent-" in n]
    operators = [n for n in workloads if n.endswith("-operator")]
    if len(schedulers) != 1 or not agents or len(operators) != 1:
        fail("reading the render", f"expected one scheduler, agents and one operator, found {sorted(workloads)}")

    with tempfile.TemporaryDirectory(prefix="offpeak-chart-smoke-") as root:
        for sub in PATHS.values():
            os.makedirs(os.path.join(root, sub, "buffer"), exist_ok=True)
        for name, text in files.items():
            with open(os.path.join(root, "etc", name), "w", encoding="utf-8") as f:
                f.write(text)
        grpc, admin = free_port(), free_port()
        command, sargs, env = workloads[schedulers[0]]
        sargs = [re.sub(r"--grpc-addr=.*", f"--grpc-addr=127.0.0.1:{grpc}", a) for a in sargs]
        sargs = [re.sub(r"--admin-addr=.*", f"--admin-addr=127.0.0.1:{admin}", a) for a in sargs]
        env = {k: localise(v, root) for k, v in env.items()}
        slog = os.path.join(root, "scheduler.log")
        scheduler = start(command, sargs, env, slog, args.bin)
        base = f"http://127.0.0.1:{admin}"
        try:
            if not wait_for(lambda: get(base + "/readyz")[0] == 200 or scheduler.poll() is not None,
                            START_TIMEOUT_S) or scheduler.poll() is not None:
                fail("scheduler", "did not become ready on /readyz", slog)
            if get(base + "/healthz")[0] != 200:
                fail("scheduler", "/healthz does not answer 200", slog)
            print(f"ok: {schedulers[0]} ready with the chart's flags, environment and files ({', '.join(sorted(files)) or 'none'})")

            for name in agents:
                command, aargs, env = workloads[name]
                env = {k: localise(v, root) for k, v in env.items() if k != POD_RESOURCES_ENV}
                env.update(OFFPEAK_SCHEDULER=f"http://127.0.0.1:{grpc}", NODE_NAME=f"smoke-{name}")
                before = accepted(base)
                alog = os.path.join(root, f"{name}.log")
                agent = start(command, aargs, env, alog, args.bin)
                if not wait_for(lambda: accepted(base) > before or agent.poll() is not None, SAMPLES_TIMEOUT_S) \
                        or agent.poll() is not None:
                    fail(name, "no samples accepted by the scheduler", alog)
                stop(agent, name, alog)
                print(f"ok: {name} registered, streamed ({accepted(base) - before} samples accepted) and stopped on SIGINT")

            command, oargs, _ = workloads[operators[0]]
            olog = os.path.join(root, "operator.log")
            exe = os.path.join(args.bin, command[0])
            with open(olog, "w", encoding="utf-8") as out:
                code = subprocess.call([exe, *command[1:], *oargs, "--help"], stdout=out, stderr=subprocess.STDOUT)
            if code != 0:
                fail(operators[0], "does not accept the chart's flags", olog)
            print(f"ok: {operators[0]} accepts the chart's flags")
        finally:
            if scheduler.poll() is None:
                stop(scheduler, "scheduler", slog)
        print("ok: the scheduler stopped on SIGINT")


def accepted(base):
    _, text = get(base + "/metrics")
    m = re.search(r"^offpeak_samples_accepted_total (\d+)", text, re.M)
    return int(m.group(1)) if m else 0


if __name__ == "__main__":
    main()
