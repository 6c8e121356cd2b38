"""Kubernetes NetworkPolicy ingress semantics, enough to ask whether one pod may reach another's port.

A pod that no ingress policy selects accepts everything; once one selects it, a connection is allowed
when some rule of some selecting policy admits the source and the port. Peers: a ``podSelector`` alone
means pods of the policy's namespace, a ``namespaceSelector`` alone every pod of the matching
namespaces, both together the matching pods of the matching namespaces. ``ipBlock`` peers never match
pod traffic here (pod IPs are not known statically).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str]
    namespace_labels: dict[str, str] = field(default_factory=dict)

    def ns_labels(self) -> dict[str, str]:
        """Namespace labels, with the one Kubernetes sets on every namespace."""
        return {"kubernetes.io/metadata.name": self.namespace, **self.namespace_labels}


def selects(selector: dict | None, labels: dict[str, str]) -> bool:
    """A LabelSelector over ``labels`` (an empty selector selects everything)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def _peer_admits(peer: dict, policy_ns: str, source: Pod) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        ns_ok = selects(peer["namespaceSelector"], source.ns_labels())
    else:
        ns_ok = source.namespace == policy_ns
    return ns_ok and selects(peer.get("podSelector"), source.labels)


def _port_admits(ports: list[dict] | None, port: int) -> bool:
    if not ports:
        return True
    return any(p.get("protocol", "TCP") == "TCP" and p.get("port") in (None, port) for p in ports)


def allowed(policies: list[dict], source: Pod, target: Pod, port: int) -> bool:
    """Whether ``source`` may open a TCP connection to ``target``'s ``port`` under ``policies``."""
    selecting = [
        p for p in policies
        if p["metadata"].get("namespace") == target.namespace
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        and selects(p["spec"].get("podSelector"), target.labels)
    ]  # fmt: skip
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from")
            peer_ok = not peers or any(_peer_admits(peer, policy["metadata"]["namespace"], source) for peer in peers)
            if peer_ok and _port_admits(rule.get("ports"), port):
                return True
    return False
