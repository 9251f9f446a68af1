"""A small evaluator of Kubernetes NetworkPolicy semantics, for the flow-matrix tests.

It follows the API's rules: a pod is isolated in a direction once any policy in its namespace selects it
with that policy type; a connection is allowed when the source's egress and the destination's ingress
both allow it (a side that no policy isolates allows everything). Peers match by pod selector (same
namespace), namespace selector (+ pod selector), or IP block, which is matched against any address,
pods' included, as the VPC CNI does: pods there have VPC addresses.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Optional, Union


@dataclass(frozen=True)
class Endpoint:
    name: str
    namespace: Optional[str]            # None: outside the cluster
    ip: str
    labels: dict[str, str] = field(default_factory=dict)
    # The pod's named container ports, as a port number (TCP) or (number, protocol): a rule may name a port, which
    # means the destination pod's port of that name and of the rule's protocol.
    named_ports: dict[str, Union[int, tuple[int, str]]] = field(default_factory=dict)
    # Labels of its namespace besides `kubernetes.io/metadata.name`, which every namespace carries.
    namespace_labels: dict[str, str] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.name, self.namespace, self.ip))


@dataclass(frozen=True)
class Policy:
    name: str
    namespace: str
    spec: dict[str, Any]


SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def selects(selector: Optional[dict], labels: dict[str, str]) -> bool:
    """A label selector: matchLabels and matchExpressions, all of them; None or {} selects everything."""
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator not in SELECTOR_OPERATORS:
            raise ValueError(f"selector operator {operator!r} is not one of {', '.join(SELECTOR_OPERATORS)}")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def policy_types(spec: dict) -> list[str]:
    """What a policy isolates. Unset, `Ingress` always, and `Egress` when it has egress rules (the API's
    defaulting, NetworkPolicySpec.policyTypes)."""
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress", *(["Egress"] if spec.get("egress") else [])]


def _peer_matches(peer: dict, policy_namespace: str, endpoint: Endpoint) -> bool:
    if "ipBlock" in peer:
        address = ipaddress.ip_address(endpoint.ip)
        block = peer["ipBlock"]
        if address not in ipaddress.ip_network(block["cidr"]):
            return False
        return not any(address in ipaddress.ip_network(cidr) for cidr in block.get("except") or [])
    if endpoint.namespace is None:
        return False
    if "namespaceSelector" in peer:
        namespace_labels = {**endpoint.namespace_labels, "kubernetes.io/metadata.name": endpoint.namespace}
        if not selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif endpoint.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), endpoint.labels)


def _port_matches(rule: dict, port: int, protocol: str, destination: Endpoint) -> bool:
    """A rule's ports: a number, a range (endPort), or a name, which means the destination pod's container port
    of that name, number and the rule's protocol (and matches nothing where it has none): kube-network-policies
    pkg/networkpolicy/networkpolicy.go compares the container port's name, port and protocol."""
    ports = rule.get("ports")
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        if "port" not in entry:
            return True
        low = entry["port"]
        if isinstance(low, str):
            named = destination.named_ports.get(low)
            if named is not None and (named if isinstance(named, tuple) else (named, "TCP")) == (port, protocol):
                return True
            continue
        if low <= port <= entry.get("endPort", low):
            return True
    return False


def _side_allows(policies: list[Policy], pod: Endpoint, other: Endpoint, port: int, protocol: str,
                 direction: str) -> bool:
    if pod.namespace is None:
        return True
    policy_type, rules_key, peers_key = (("Egress", "egress", "to") if direction == "egress"
                                         else ("Ingress", "ingress", "from"))
    isolating = [p for p in policies if p.namespace == pod.namespace
                 and policy_type in policy_types(p.spec)
                 and selects(p.spec.get("podSelector") or {}, pod.labels)]
    if not isolating:
        return True
    destination = other if direction == "egress" else pod
    for policy in isolating:
        for rule in policy.spec.get(rules_key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(_peer_matches(peer, policy.namespace, other) for peer in peers)
            if peer_ok and _port_matches(rule, port, protocol, destination):
                return True
    return False


def allowed(policies: list[Policy], source: Endpoint, destination: Endpoint, port: int,
            protocol: str = "TCP") -> bool:
    return (_side_allows(policies, source, destination, port, protocol, "egress")
            and _side_allows(policies, destination, source, port, protocol, "ingress"))


@dataclass(frozen=True)
class Service:
    """A ClusterIP Service: its address and the selector of the pods behind it."""
    name: str
    namespace: str
    ip: str
    selector: tuple[tuple[str, str], ...]

    @property
    def selector_labels(self) -> dict[str, str]:
        return dict(self.selector)


def _egress_admits_service(policies: list[Policy], source: Endpoint, service: Service, port: int,
                           protocol: str) -> bool:
    """Egress as the VPC CNI's policy agent evaluates it: before the ClusterIP is translated. The controller
    resolves a Service's ClusterIP for a podSelector peer only when that selector matches the Service's own
    selector, read as a label set (amazon-network-policy-controller-k8s, pkg/resolvers/endpoints.go,
    getMatchingServiceClusterIPs); an ipBlock must contain the ClusterIP itself."""
    isolating = [p for p in policies if p.namespace == source.namespace
                 and "Egress" in policy_types(p.spec) and selects(p.spec.get("podSelector") or {}, source.labels)]
    if not isolating:
        return True
    as_endpoint = Endpoint(service.name, service.namespace, service.ip, service.selector_labels)
    for policy in isolating:
        for rule in policy.spec.get("egress") or []:
            if not _port_matches(rule, port, protocol, as_endpoint):
                continue
            peers = rule.get("to")
            if not peers:
                return True
            for peer in peers:
                if "ipBlock" in peer:
                    if _peer_matches(peer, policy.namespace, as_endpoint):
                        return True
                elif _peer_matches(peer, policy.namespace, as_endpoint):
                    return True
    return False


def allowed_through_service(policies: list[Policy], source: Endpoint, service: Service, backend: Endpoint,
                            port: int, protocol: str = "TCP", egress_before_translation: bool = True) -> bool:
    """A connection to a Service's ClusterIP that lands on `backend`. Ingress is always evaluated at the
    backend pod (after translation); egress at the ClusterIP where the plugin does so (the VPC CNI), at the
    backend pod otherwise (kind's kube-network-policies)."""
    if egress_before_translation:
        egress = _egress_admits_service(policies, source, service, port, protocol)
    else:
        egress = _side_allows(policies, source, backend, port, protocol, "egress")
    return egress and _side_allows(policies, backend, source, port, protocol, "ingress")
