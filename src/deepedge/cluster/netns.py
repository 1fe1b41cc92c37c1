"""Per-device network namespaces joined by a bridge, each link shaped to the device's bandwidth.

With ``network: netns`` every device gets its own namespace with one interface, ``eth0``,
on a private /24 behind a bridge in the root namespace, where the coordinator (agents'
rendezvous, load generator) lives. Both directions of each link are shaped with ``tbf`` to
the device's ``link_mbps`` (the ``netem`` qdisc is not available on our machines), so
all-reduce and LC traffic cross a link of the board's speed instead of loopback.

Names carry a short hash of the owner (pid + start time) and an owner file under
``/run/deepedge/net`` records it, so fabrics of a killed coordinator are reaped like its
cgroups.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deepedge.cluster.cgroups import owner_alive
from deepedge.errors import ClusterError
from deepedge.spec import DeviceSpec

__all__ = ["DeviceLink", "NetworkFabric", "netns_available"]

log = logging.getLogger(__name__)

OWNERS = Path("/run/deepedge/net")
NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
_SUBNET_BASE = ipaddress.ip_network("10.213.0.0/16")


def netns_available() -> tuple[bool, str]:
    """Whether this process can create namespaces and veth links (root and iproute2)."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return False, "iproute2 (ip, tc) is not installed"
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    return True, "ip netns + veth + tbf"


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(
            f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.returncode}",
            hint="network emulation needs root and iproute2; use network: loopback otherwise",
        )


def _tbf(mbps: float) -> list[str]:
    rate_bps = int(mbps * 1e6)
    burst = max(16_000, rate_bps // 8 // 100)  # 10 ms of traffic, at least a few MTUs
    return ["tbf", "rate", f"{rate_bps}bit", "burst", str(burst), "latency", "50ms"]


@dataclass(frozen=True)
class DeviceLink:
    device: str
    netns: str
    address: str
    host_veth: str
    mbps: float

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.netns


class NetworkFabric:
    """A bridge with one shaped veth link per device namespace."""

    def __init__(self, owner: str, devices: Sequence[DeviceSpec]) -> None:
        if len(devices) > 250:
            raise ClusterError(f"network emulation supports up to 250 devices, got {len(devices)}")
        self.owner = owner
        self.short = hashlib.sha1(owner.encode()).hexdigest()[:6]
        self.bridge = f"deb{self.short}"
        subnet_index = int(self.short, 16) % 250 + 1
        self.subnet = list(_SUBNET_BASE.subnets(new_prefix=24))[subnet_index]
        hosts = list(self.subnet.hosts())
        self.gateway = str(hosts[0])
        self._hosts = hosts
        self._up = False
        self.links = {d.name: self._link(i, d) for i, d in enumerate(devices)}

    def _link(self, i: int, device: DeviceSpec) -> DeviceLink:
        """The ``i``-th link: its namespace, address and host-side veth follow from ``i``."""
        return DeviceLink(
            device.name,
            f"deepedge-{self.short}-{i}",
            str(self._hosts[i + 1]),
            f"dev{self.short}{i}",
            device.link_mbps or 1000.0,
        )

    def up(self) -> None:
        OWNERS.mkdir(parents=True, exist_ok=True)
        (OWNERS / self.short).write_text(self.owner)
        self._up = True
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for link in self.links.values():
                self._add(link)
        except BaseException:
            self.down()
            raise

    def add_link(self, device: DeviceSpec) -> DeviceLink:
        """Give a device joining the cluster its own link, created at once if the fabric is up.

        It takes the lowest free index, so its namespace and veth are named like the
        others and :meth:`down` (and the reaping of a dead owner's fabric) removes it too.
        """
        if device.name in self.links:
            raise ClusterError(f"device {device.name!r} already has a network link")
        used = {int(link.netns.rsplit("-", 1)[1]) for link in self.links.values()}
        i = next((i for i in range(250) if i not in used), None)
        if i is None:
            raise ClusterError("network emulation supports up to 250 devices, all are taken")
        link = self._link(i, device)
        if self._up:
            try:
                self._add(link)
            except BaseException:
                _remove_link(link)
                raise
        self.links[device.name] = link
        return link

    def remove_link(self, name: str) -> None:
        """Delete one device's namespace and veth pair (a device leaving). Idempotent."""
        link = self.links.pop(name, None)
        if link is not None:
            _remove_link(link)

    def _add(self, link: DeviceLink) -> None:
        ns = link.netns
        _run("ip", "netns", "add", ns)
        _run(
            "ip", "link", "add", link.host_veth, "type", "veth", "peer", "name", "eth0", "netns", ns
        )
        _run("ip", "link", "set", link.host_veth, "master", self.bridge, "up")
        _run(
            "ip", "-n", ns, "addr", "add", f"{link.address}/{self.subnet.prefixlen}", "dev", "eth0"
        )
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        # upload: the device's egress; download: the bridge port's egress towards it
        _run("tc", "-n", ns, "qdisc", "add", "dev", "eth0", "root", *_tbf(link.mbps))
        _run("tc", "qdisc", "add", "dev", link.host_veth, "root", *_tbf(link.mbps))

    def down(self) -> None:
        """Delete every namespace (their veth ends go with them) and the bridge. Idempotent."""
        self._up = False
        _teardown(self.short)

    @staticmethod
    def reap_stale() -> list[str]:
        """Remove fabrics whose owner process is gone."""
        reaped = []
        if OWNERS.is_dir():
            for f in OWNERS.iterdir():
                with contextlib.suppress(OSError):
                    if not owner_alive(f.read_text().strip()):
                        log.warning("removing stale network fabric %s", f.name)
                        _teardown(f.name)
                        reaped.append(f.name)
        return reaped


def _remove_link(link: DeviceLink) -> None:
    """Delete a link's host veth (which removes the pair at once) and its namespace."""
    subprocess.run(["ip", "link", "del", link.host_veth], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "del", link.netns], capture_output=True, check=False)


def _teardown(short: str) -> None:
    # Delete the host veth ends first: that removes each pair at once, whereas a deleted
    # namespace frees its end asynchronously, and a new fabric of the same owner (a
    # second session in one process) could find the old name still taken.
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for veth in re.findall(rf"^\d+: (dev{short}\d+)[@:]", links, flags=re.MULTILINE):
        subprocess.run(["ip", "link", "del", veth], capture_output=True, check=False)
    if NETNS_DIR.is_dir():
        for ns in NETNS_DIR.glob(f"deepedge-{short}-*"):
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", f"deb{short}"], capture_output=True, check=False)
    with contextlib.suppress(OSError):
        (OWNERS / short).unlink()
