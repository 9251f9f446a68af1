"""The NetworkPolicy evaluator (tests/support/netpol.py) against the Kubernetes documentation's own examples and rules
(kubernetes.io, Concepts → Services → Network Policies): what the flow-matrix tests prove rests on it."""

from __future__ import annotations

import pytest

from support.netpol import Endpoint, Policy, Service, allowed, allowed_through_service, policy_types, selects

# The documentation's "test-network-policy", in namespace `default`.
DOCS_POLICY = Policy("test-network-policy", "default", {
    "podSelector": {"matchLabels": {"role": "db"}},
    "policyTypes": ["Ingress", "Egress"],
    "ingress": [{"from": [{"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                          {"namespaceSelector": {"matchLabels": {"project": "myproject"}}},
                          {"podSelector": {"matchLabels": {"role": "frontend"}}}],
                 "ports": [{"protocol": "TCP", "port": 6379}]}],
    "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"protocol": "TCP", "port": 5978}]}],
})
DB = Endpoint("db", "default", "192.168.0.10", {"role": "db"})
FRONTEND = Endpoint("frontend", "default", "192.168.0.11", {"role": "frontend"})
OTHER = Endpoint("other", "default", "192.168.0.12", {"role": "other"})
FROM_MYPROJECT = Endpoint("anything", "team", "192.168.1.5", {"app": "x"}, namespace_labels={"project": "myproject"})
FROM_ELSEWHERE = Endpoint("anything", "team", "192.168.1.6", {"app": "x"}, namespace_labels={"project": "theirs"})


def outside(ip: str) -> Endpoint:
    return Endpoint(ip, None, ip)


def test_the_documentations_example_admits_what_it_says_and_nothing_else():
    # "allows connections to all pods in the default namespace with the label role=db on TCP port 6379 from":
    assert allowed([DOCS_POLICY], FRONTEND, DB, 6379)           # pods in default with role=frontend
    assert allowed([DOCS_POLICY], FROM_MYPROJECT, DB, 6379)     # any pod in a namespace labelled project=myproject
    assert allowed([DOCS_POLICY], outside("172.17.0.9"), DB, 6379)    # 172.17.0.0–172.17.0.255
    assert allowed([DOCS_POLICY], outside("172.17.2.1"), DB, 6379)    # and 172.17.2.0–172.17.255.255
    assert not allowed([DOCS_POLICY], outside("172.17.1.9"), DB, 6379)   # the exception
    assert not allowed([DOCS_POLICY], OTHER, DB, 6379)
    assert not allowed([DOCS_POLICY], FROM_ELSEWHERE, DB, 6379)
    assert not allowed([DOCS_POLICY], FRONTEND, DB, 6380)
    assert not allowed([DOCS_POLICY], FRONTEND, DB, 6379, "UDP")
    # "allows connections from any pod in the default namespace with role=db to CIDR 10.0.0.0/24 on TCP 5978"
    assert allowed([DOCS_POLICY], DB, outside("10.0.0.7"), 5978)
    assert not allowed([DOCS_POLICY], DB, outside("10.0.1.7"), 5978)
    assert not allowed([DOCS_POLICY], DB, FRONTEND, 80)
    # Pods it does not select are not isolated.
    assert allowed([DOCS_POLICY], OTHER, FRONTEND, 80)


def test_a_namespace_and_a_pod_selector_in_one_peer_mean_both_in_two_peers_either():
    """"Behavior of to and from selectors": one element with both selectors is an AND, two elements an OR."""
    both = Policy("and", "default", {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"user": "alice"}}, "podSelector": {"matchLabels": {"role": "client"}}}]}]})
    either = Policy("or", "default", {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"user": "alice"}}}, {"podSelector": {"matchLabels": {"role": "client"}}}]}]})
    alice_client = Endpoint("c", "alice-ns", "10.1.0.1", {"role": "client"}, namespace_labels={"user": "alice"})
    alice_other = Endpoint("o", "alice-ns", "10.1.0.2", {"role": "other"}, namespace_labels={"user": "alice"})
    local_client = Endpoint("l", "default", "10.1.0.3", {"role": "client"})
    assert allowed([both], alice_client, DB, 80)
    assert not allowed([both], alice_other, DB, 80) and not allowed([both], local_client, DB, 80)
    assert allowed([either], alice_other, DB, 80) and allowed([either], local_client, DB, 80)


def test_the_default_policies():
    deny_ingress = Policy("default-deny-ingress", "default", {"podSelector": {}, "policyTypes": ["Ingress"]})
    allow_ingress = Policy("allow-all-ingress", "default", {"podSelector": {}, "ingress": [{}],
                                                            "policyTypes": ["Ingress"]})
    deny_egress = Policy("default-deny-egress", "default", {"podSelector": {}, "policyTypes": ["Egress"]})
    allow_egress = Policy("allow-all-egress", "default", {"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]})
    assert not allowed([deny_ingress], FRONTEND, DB, 80)
    assert allowed([deny_ingress], DB, outside("1.1.1.1"), 443)          # egress untouched
    assert allowed([deny_ingress, allow_ingress], FRONTEND, DB, 80)      # policies add up
    assert not allowed([deny_egress], DB, outside("1.1.1.1"), 443)
    assert allowed([deny_egress, allow_egress], DB, outside("1.1.1.1"), 443)


def test_policy_types_default_to_ingress_and_to_egress_when_there_are_egress_rules():
    """"If no policyTypes are specified on a NetworkPolicy then by default Ingress will always be set and Egress
    will be set if the NetworkPolicy has any egress rules.\""""
    assert policy_types({"podSelector": {}}) == ["Ingress"]
    assert policy_types({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}]}]}) == [
        "Ingress", "Egress"]
    untyped = Policy("untyped", "default", {"podSelector": {"matchLabels": {"role": "db"}},
                                            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}]}]})
    # It isolates role=db both ways: no ingress rule admits anything, egress only to 10.0.0.0/24.
    assert not allowed([untyped], FRONTEND, DB, 6379)
    assert allowed([untyped], DB, outside("10.0.0.1"), 443)
    assert not allowed([untyped], DB, outside("10.0.1.1"), 443)


def test_a_port_range_and_a_named_port():
    """endPort (the documentation's 32000–32768 example), and a named port, which means the destination pod's
    container port of that name."""
    ranged = Policy("multi-port-egress", "default", {"podSelector": {"matchLabels": {"role": "db"}},
                                                     "policyTypes": ["Egress"], "egress": [{
        "to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"protocol": "TCP", "port": 32000, "endPort": 32768}]}]})
    assert allowed([ranged], DB, outside("10.0.0.1"), 32000) and allowed([ranged], DB, outside("10.0.0.1"), 32768)
    assert not allowed([ranged], DB, outside("10.0.0.1"), 32769)
    named = Policy("named", "default", {"podSelector": {"matchLabels": {"role": "db"}}, "policyTypes": ["Ingress"],
                                        "ingress": [{"ports": [{"protocol": "TCP", "port": "redis"}]}]})
    with_name = Endpoint("db", "default", "192.168.0.10", {"role": "db"}, named_ports={"redis": 6379})
    assert allowed([named], FRONTEND, with_name, 6379)
    assert not allowed([named], FRONTEND, with_name, 6380)
    assert not allowed([named], FRONTEND, DB, 6379), "a pod without a port of that name"
    # The name stands for a port of one protocol: a UDP container port of that name is not what a TCP rule names,
    # and a UDP rule naming it admits UDP only.
    udp_port = Endpoint("db", "default", "192.168.0.10", {"role": "db"}, named_ports={"redis": (6379, "UDP")})
    assert not allowed([named], FRONTEND, udp_port, 6379, "TCP")
    named_udp = Policy("named-udp", "default", {"podSelector": {"matchLabels": {"role": "db"}}, "policyTypes": ["Ingress"],
                                                "ingress": [{"ports": [{"protocol": "UDP", "port": "redis"}]}]})
    assert allowed([named_udp], FRONTEND, udp_port, 6379, "UDP")
    assert not allowed([named_udp], FRONTEND, udp_port, 6379, "TCP")


def test_an_unknown_selector_operator_is_refused_not_matched():
    with pytest.raises(ValueError, match="'Gt' is not one of In, NotIn, Exists, DoesNotExist"):
        selects({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}, {"a": "2"})
    assert selects({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}), \
        "NotIn matches a missing key"


def test_a_service_is_judged_at_its_address_where_the_plugin_does_so():
    """The VPC CNI checks egress at the ClusterIP: a podSelector peer reaches it only if it matches the Service's
    own selector; kube-network-policies checks at the pod."""
    service = Service("kube-dns", "kube-system", "172.20.0.10", (("k8s-app", "kube-dns"),))
    coredns = Endpoint("coredns", "kube-system", "10.20.0.53", {"k8s-app": "kube-dns", "pod-template-hash": "x"})
    by_service_selector = Policy("dns", "default", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"protocol": "UDP", "port": 53}]}]})
    by_pod_only_label = Policy("dns", "default", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod-template-hash": "x"}}}],
        "ports": [{"protocol": "UDP", "port": 53}]}]})
    assert allowed_through_service([by_service_selector], FRONTEND, service, coredns, 53, "UDP")
    assert not allowed_through_service([by_pod_only_label], FRONTEND, service, coredns, 53, "UDP")
    assert allowed_through_service([by_pod_only_label], FRONTEND, service, coredns, 53, "UDP",
                                   egress_before_translation=False)
