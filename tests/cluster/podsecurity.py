"""The Pod Security Standards level a pod template meets (the checks of the ``baseline`` and ``restricted``
profiles that a manifest can show; https://kubernetes.io/docs/concepts/security/pod-security-standards/)."""

from __future__ import annotations

LEVELS = ("restricted", "baseline", "privileged")  # strictest first
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP",
    "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip


def containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def baseline_violations(pod: dict) -> list[str]:
    found = [f"{key}: true" for key in ("hostNetwork", "hostPID", "hostIPC") if pod.get(key)]
    found += [f"hostPath volume {v['name']}" for v in pod.get("volumes", []) if "hostPath" in v]
    if (pod.get("securityContext") or {}).get("seccompProfile", {}).get("type") == "Unconfined":
        found.append("pod seccompProfile Unconfined")
    for c in containers(pod):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            found.append(f"{c['name']}: privileged")
        extra = set((sc.get("capabilities") or {}).get("add", [])) - BASELINE_CAPABILITIES
        found += [f"{c['name']}: adds capability {cap}" for cap in sorted(extra)]
        found += [f"{c['name']}: hostPort {p['hostPort']}" for p in c.get("ports", []) if p.get("hostPort")]
        if sc.get("seccompProfile", {}).get("type") == "Unconfined":
            found.append(f"{c['name']}: seccompProfile Unconfined")
    return found


def restricted_violations(pod: dict) -> list[str]:
    found = baseline_violations(pod)
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {sorted(kinds)}")
    pod_sc = pod.get("securityContext") or {}
    for c in containers(pod):
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{c['name']}: allowPrivilegeEscalation is not false")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            found.append(f"{c['name']}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            found.append(f"{c['name']}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile")) or {}
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{c['name']}: seccompProfile is {seccomp.get('type')}")
        caps = sc.get("capabilities") or {}
        if "ALL" not in caps.get("drop", []):
            found.append(f"{c['name']}: does not drop ALL capabilities")
        found += [f"{c['name']}: adds {cap}" for cap in caps.get("add", []) if cap != "NET_BIND_SERVICE"]
    return found


def level(pod: dict) -> str:
    """The strictest profile ``pod`` (a PodSpec) meets."""
    if not restricted_violations(pod):
        return "restricted"
    return "baseline" if not baseline_violations(pod) else "privileged"


def admits(namespace_level: str, pod_level: str) -> bool:
    """Whether a namespace enforcing ``namespace_level`` admits a pod that meets ``pod_level``."""
    return LEVELS.index(pod_level) <= LEVELS.index(namespace_level)
