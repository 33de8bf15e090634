#!/usr/bin/env python3
"""Runs an installed port-agent as its systemd unit does: its ExecStart, an unprivileged user,
StateDirectory, the EnvironmentFile's variables, NOTIFY_SOCKET and WATCHDOG_USEC; checks that it
notifies READY=1 and pings the watchdog, that SIGTERM ends it with exit 0 and STOPPING=1, and
that its state file is there, readable by `port-agent state stats`. Then the upgrade: a state
file an older port-agent wrote (migrations/fixtures/v1.redb) is refused by a read as older, not
corrupt, and left untouched; a command that writes migrates it, and it reads from then on.

usage: run-installed-like-the-unit.py ROOT PORT_BASE_URL
ROOT is where the .deb was unpacked; PORT_BASE_URL a Port (the emulator)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

root, port_url = sys.argv[1], sys.argv[2]
binary = os.path.join(root, "usr/bin/port-agent")
unit = open(os.path.join(root, "lib/systemd/system/port-agent.service")).read()
assert "ExecStart=/usr/bin/port-agent run --config /etc/port-agent/agent.yaml" in unit, unit
assert "Type=notify" in unit and "WatchdogSec=" in unit and "StateDirectory=port-agent" in unit

work = tempfile.mkdtemp()
import atexit
atexit.register(shutil.rmtree, work, True)
os.chmod(work, 0o755)
state_dir = os.path.join(work, "state")
os.mkdir(state_dir, 0o700)
shutil.chown(state_dir, "nobody", "nogroup")
# The packaged config, pointed at this Port; the secrets as the EnvironmentFile gives them.
config = os.path.join(work, "agent.yaml")
packaged = open(os.path.join(root, "etc/port-agent/agent.yaml")).read()
open(config, "w").write(packaged.replace("base_url: https://api.getport.io", f"base_url: {port_url}"))
os.chmod(config, 0o644)

notify_path = os.path.join(work, "notify")
listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
listener.bind(notify_path)
os.chmod(notify_path, 0o777)
listener.settimeout(0.2)

env = {
    "PATH": "/usr/bin:/bin",
    "NOTIFY_SOCKET": notify_path,
    "WATCHDOG_USEC": "400000",
    "STATE_DIRECTORY": state_dir,
    "OCEAN__PORT__CLIENT_ID": "emulator-client",
    "OCEAN__PORT__CLIENT_SECRET": "emulator-secret",
}
agent = subprocess.Popen(
    ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", binary, "run", "--config", config],
    cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
)


def receive(until, limit):
    got = []
    deadline = time.time() + limit
    while time.time() < deadline and not until(got):
        try:
            got.append(listener.recv(4096).decode())
        except socket.timeout:
            pass
    return got


got = receive(lambda g: "READY=1" in g and g.count("WATCHDOG=1") >= 2, 60)
ok = "READY=1" in got and got.count("WATCHDOG=1") >= 2
agent.send_signal(signal.SIGTERM)
code = agent.wait(60)
stderr = agent.stderr.read().decode()
after = receive(lambda g: "STOPPING=1" in g, 5)
if not ok or code != 0 or "STOPPING=1" not in after:
    sys.exit(f"notifications {got + after}, exit {code}\n{stderr}")
files = [f for f in os.listdir(state_dir) if f.endswith(".redb")]
if not files:
    sys.exit(f"no state file in the StateDirectory\n{stderr}")
stats = subprocess.run([binary, "state", "stats", "--state", os.path.join(state_dir, files[0])],
                       capture_output=True, text=True)
if stats.returncode != 0:
    sys.exit(f"the state is not readable after the stop: {stats.stderr}")
print(f"installed binary as the unit runs it (user nobody): READY=1, {got.count('WATCHDOG=1')} watchdog pings, SIGTERM exit 0, STOPPING=1, state {files[0]} intact")

fixture = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../migrations/fixtures/v1.redb")
old_state = os.path.join(work, "from-an-older-agent.redb")
shutil.copy(fixture, old_state)
before = open(old_state, "rb").read()
read = subprocess.run([binary, "--log-format", "text", "state", "stats", "--state", old_state],
                      capture_output=True, text=True)
if read.returncode == 0 or "older port-agent" not in read.stderr or "corrupt" in read.stderr:
    sys.exit(f"an older state file read by the installed binary: {read.stderr}")
if open(old_state, "rb").read() != before:
    sys.exit("reading an older state file changed it")
for command in (["state", "compact"], ["state", "stats"]):
    done = subprocess.run([binary, *command, "--state", old_state], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} on an older state file: {done.stderr}")
if "3 entities" not in done.stdout:
    sys.exit(f"the migrated state lost entities: {done.stdout}")
print("installed binary on an older state file: refused to read as older (untouched), migrated by compact, 3 entities kept")
