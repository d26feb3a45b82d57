"""Where ``http``/``request``/``publish`` steps and webhooks may call: the egress policy.

Whoever may submit a workflow may make the orchestrator call out, from its network and
with its NATS rights. So by default natsflow calls only the public internet over http
and https, and only subjects that are neither the server's nor its own; an operator's
allowlist (``--allow-egress``, ``--allow-subject``) opens the rest. This module is pure:
:mod:`orchestrator.egress` resolves each connection's host, checks *every* address with
:meth:`EgressPolicy.check_addresses` and connects to the address it checked.

Rules (the ``rule`` of an ``egress-refused`` error, in the order they are tried)::

    scheme              not http or https
    cloud-metadata      169.254.169.254, fd00:ec2::254, 100.100.100.200,
                        metadata.google.internal (opened only by naming it exactly)
    loopback            127.0.0.0/8, ::1
    unspecified         0.0.0.0/8, ::
    private             10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7, fec0::/10
    link-local          169.254.0.0/16, fe80::/10
    carrier-grade-nat   100.64.0.0/10
    multicast           224.0.0.0/4, ff00::/8
    reserved            240.0.0.0/4 (broadcast included), 192.0.0.0/24, 198.18.0.0/15,
                        100::/64

IPv6 forms of an IPv4 address (``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4
``2002::/16``) are judged as that IPv4 address. Subject rules (the ``rule`` of a
``forbidden-subject`` error) come from :func:`contracts.subjects.reserved_subject_rule`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .builtins import PUBLISH_TASK, REQUEST_TASK
from .errors import EgressRefused, ValidationFailed
from .subjects import Subjects, reserved_subject_rule

__all__ = [
    "ALLOWED_SCHEMES",
    "LOOPBACK",
    "METADATA_HOSTS",
    "EgressPolicy",
    "IPAddress",
    "address_rule",
    "check_literal_subjects",
    "subject_matches",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES: Final = frozenset({"http", "https"})
#: Host names of cloud metadata services (their addresses are in the table below).
METADATA_HOSTS: Final = frozenset({"metadata.google.internal"})
#: What ``natsflow dev`` allows: the loopback networks.
LOOPBACK: Final = ("127.0.0.0/8", "::1/128")

_METADATA_ADDRESSES: Final[frozenset[IPAddress]] = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200"))
#: The one table of refused networks, most telling rule first.
_RULES: Final[tuple[tuple[str, tuple[_Network, ...]], ...]] = tuple(
    (rule, tuple(ipaddress.ip_network(n) for n in nets)) for rule, nets in (
        ("loopback", ("127.0.0.0/8", "::1/128")),
        ("unspecified", ("0.0.0.0/8", "::/128")),
        ("private", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7",
                     "fec0::/10")),
        ("link-local", ("169.254.0.0/16", "fe80::/10")),
        ("carrier-grade-nat", ("100.64.0.0/10",)),
        ("multicast", ("224.0.0.0/4", "ff00::/8")),
        ("reserved", ("240.0.0.0/4", "192.0.0.0/24", "198.18.0.0/15", "100::/64")),
    ))
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")
_6TO4: Final = ipaddress.ip_network("2002::/16")


def _as_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address stands for, if it is one of the forms that carry
    one to an IPv4 host; else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def address_rule(address: IPAddress) -> str | None:
    """The rule that refuses ``address`` by default, or None for a public address."""
    for candidate in dict.fromkeys((address, _as_ipv4(address))):
        if candidate in _METADATA_ADDRESSES:
            return "cloud-metadata"
        for rule, networks in _RULES:
            if any(candidate in net for net in networks):
                return rule
    return None


def _host_name(host: str) -> str:
    return host.strip().rstrip(".").lower().removeprefix("[").removesuffix("]")


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a NATS subject matches a pattern (``*`` one token, a final ``>`` the rest)."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(want) == len(got)


def _hint(option: str) -> str:
    env = {"--allow-egress": "NATSFLOW_EGRESS_ALLOW",
           "--allow-subject": "NATSFLOW_SUBJECTS_ALLOW"}[option]
    return f"allow it with {option} or {env}"


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """What an operator opened beyond the defaults (see the module docstring).

    Args:
        hosts: Host names that may be called whatever they resolve to; ``*.example.com``
            opens every name under ``example.com``.
        networks: Addresses that may be called (an IP is its own /32 or /128).
        subjects: NATS subject patterns ``request`` and ``publish`` steps may use although
            they are the server's or natsflow's (``$SRV.>``, ``natsflow.api.>``).
    """

    hosts: frozenset[str] = frozenset()
    networks: tuple[_Network, ...] = ()
    subjects: tuple[str, ...] = ()

    @classmethod
    def parse(cls, egress: Iterable[str] = (), subjects: Iterable[str] = ()) -> EgressPolicy:
        """A policy from allowlist entries as operators write them.

        Args:
            egress: Host names and CIDRs (or IPs); an entry may be a comma-separated list.
            subjects: Subject patterns; an entry may be a comma-separated list.

        Raises:
            ValidationFailed: an entry is neither (naming the option).
        """
        hosts: set[str] = set()
        networks: list[_Network] = []
        for item in _items(egress):
            try:
                networks.append(ipaddress.ip_network(_host_name(item), strict=False))
                continue
            except ValueError:
                pass
            name = _host_name(item)
            labels = name.removeprefix("*.").split(".")
            if "/" in name or not all(label and all(c.isalnum() or c in "-_" for c in label)
                                      for label in labels):
                raise ValidationFailed(f"--allow-egress: {item!r} is neither a host name nor "
                                       "a CIDR", field="--allow-egress")
            hosts.add(name)
        patterns: list[str] = []
        for item in _items(subjects):
            tokens = item.split(".")
            if not all(t and not any(c.isspace() for c in t) for t in tokens) or any(
                    ">" in t and (t != ">" or i != len(tokens) - 1)
                    for i, t in enumerate(tokens)):
                raise ValidationFailed(f"--allow-subject: {item!r} is not a subject pattern",
                                       field="--allow-subject")
            patterns.append(item)
        return cls(hosts=frozenset(hosts), networks=tuple(networks), subjects=tuple(patterns))

    def _host_allowed(self, host: str, *, exact: bool = False) -> bool:
        name = _host_name(host)
        if name in self.hosts:
            return True
        return not exact and any(h.startswith("*.") and name.endswith(h[1:])
                                 for h in self.hosts)

    # -- http steps and webhooks ------------------------------------------------------
    def check_scheme(self, scheme: str, host: str) -> None:
        """Refuse anything but http and https.

        Raises:
            EgressRefused: rule ``scheme``.
        """
        if scheme.lower() not in ALLOWED_SCHEMES:
            raise EgressRefused(f"{scheme}://{host} is refused (scheme): natsflow calls "
                                "only http and https", details={"host": host, "rule": "scheme"})

    def host_allowed(self, host: str) -> bool:
        """True when the operator opened this host name: its addresses are not checked
        (but a metadata service's, unless the name is given exactly)."""
        return self._host_allowed(host)

    def check_host(self, host: str) -> None:
        """Refuse a metadata service by name, before anything is resolved.

        Raises:
            EgressRefused: rule ``cloud-metadata``.
        """
        name = _host_name(host)
        if name in METADATA_HOSTS and not self._host_allowed(name, exact=True):
            raise EgressRefused(f"{name} is a cloud metadata service; "
                                f"{_hint('--allow-egress')}",
                                details={"host": name, "rule": "cloud-metadata"})

    def check_addresses(self, host: str, addresses: Sequence[IPAddress]) -> None:
        """Refuse the connection unless every address ``host`` resolved to is allowed.

        One refused address refuses them all: a name that answers a public and a private
        address must not get a second try at the private one.

        Raises:
            EgressRefused: naming the host, the address and its rule.
        """
        opened = self._host_allowed(host)
        for address in addresses:
            rule = address_rule(address)
            if rule is None or self._address_allowed(address, rule, opened=opened,
                                                     host=host):
                continue
            shown = _host_name(host)
            what = shown if shown == str(address) else f"{shown} ({address})"
            raise EgressRefused(
                f"{what} is a {rule} address; {_hint('--allow-egress')}",
                details={"host": shown, "address": str(address), "rule": rule})

    def _address_allowed(self, address: IPAddress, rule: str, *, opened: bool,
                         host: str) -> bool:
        if rule == "cloud-metadata":
            # Credentials live there: a broad CIDR or a wildcard name does not open it.
            return self._host_allowed(host, exact=True) or any(
                net.num_addresses == 1 and address in net for net in self.networks)
        return opened or any(address in net for net in self.networks)

    # -- request and publish steps ----------------------------------------------------
    def subject_rule(self, subject: str, subjects: Subjects) -> str | None:
        """The rule that refuses a step's subject (None: allowed)."""
        rule = reserved_subject_rule(subjects, subject)
        if rule is None or any(subject_matches(p, subject) for p in self.subjects):
            return None
        return rule

    def subject_refusal(self, subject: str, subjects: Subjects) -> str | None:
        """The message refusing a step's subject (None: allowed)."""
        rule = self.subject_rule(subject, subjects)
        if rule is None:
            return None
        whose = ("the NATS server's own" if rule == "server-subject"
                 else f"natsflow's own (under {subjects.prefix}.)")
        return f"{subject} is {whose} subject ({rule}); {_hint('--allow-subject')}"

    def as_dict(self) -> dict[str, Any]:
        """The allowlist as data (for start-up logs)."""
        return {"hosts": sorted(self.hosts), "networks": [str(n) for n in self.networks],
                "subjects": list(self.subjects)}


def _items(values: Iterable[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def check_literal_subjects(config: Any, *, policy: EgressPolicy, subjects: Subjects,
                           field_prefix: str = "") -> None:
    """Refuse, at submit, a ``request`` or ``publish`` step whose literal subject the
    policy refuses (templated subjects are checked when they are sent).

    Args:
        config: A :class:`~contracts.models.WorkflowConfig` (or anything with ``steps``).
        policy: The orchestrator's egress policy.
        subjects: The deployment's names.
        field_prefix: Put in front of the field (``config.`` for a create request).

    Raises:
        ValidationFailed: naming the step and ``steps.<n>.subject``.
    """
    for i, step in enumerate(config.steps):
        bodies = [(f"steps.{i}", step)]
        # vars(), not getattr(..., None): a field missing from a model costs getattr a
        # raised and caught AttributeError (~13 us each, per step of every create).
        if vars(step).get("step") is not None:  # a map's item step
            bodies.append((f"steps.{i}.step", step.step))
        for where, body in bodies:
            fields = vars(body)
            subject, name = fields.get("subject"), "subject"
            if fields.get("task") in (REQUEST_TASK, PUBLISH_TASK):
                subject, name = body.input.get("subject"), "input.subject"
            if not isinstance(subject, str) or "${" in subject:
                continue
            refusal = policy.subject_refusal(subject, subjects)
            if refusal is not None:
                raise ValidationFailed(refusal, step=step.id,
                                       field=f"{field_prefix}{where}.{name}")
