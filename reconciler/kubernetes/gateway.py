"""The gateway on Kubernetes: its Deployment, Service and routes ConfigMap, and a headless
Service per engine model whose addresses are that model's ready pods.

The gateway process (the reconciler's own image, deploy/Dockerfile) reads routes.json from the
ConfigMap mounted at ROUTES_DIR, and resolves each model's headless Service into instances
(gateway.discovery), so aliases, fallbacks, remote models, overflow, keys and request metrics
work as on one host. The table's format belongs to the gateway: the render is handed a function
that writes it (cli/render.py passes gateway.cluster_routes.routes_file).

Keys never live in git: every RECONCILER_SECRET_* variable the gateway reads (gateway.api_keys,
remote models' api_key_env) comes from the Secret `kubernetes.gateway.keys_secret`, which the
operator creates; so does each remote key's `<name>_HOSTS`, the binding that lets the key go to
that endpoint (core.secrets: a pull request that moves an endpoint must not take the key along).
All are required (optional: false): a missing one keeps the pod from starting, and says which.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from reconciler.core.cluster import GATEWAY_IMAGE_PLACEHOLDER, KubernetesSpec
from reconciler.core.desired import DesiredState
from reconciler.core.secrets import hosts_variable
from reconciler.core.spec import ModelSpec
from reconciler.kubernetes.objects import LABEL_MODEL, MANAGED_BY, labels
from reconciler.kubernetes.pods import PORT_NAME, container_port

GATEWAY = "reconciler-gateway"
ROUTES_CONFIGMAP = "reconciler-gateway-routes"
ROUTES_DIR = "/etc/reconciler"
ROUTES_KEY = "routes.json"
PODS_SUFFIX = "-pods"
CLUSTER_DOMAIN = "cluster.local"
RUN_AS = 10001
"""the user deploy/Dockerfile creates: not root, owns nothing in the image"""
HEAD_ROOM_MB = 256
"""the gateway's own memory above the request bodies it may hold (gateway.max_buffered_mb)"""
RoutesFile = Callable[[DesiredState, Mapping[str, tuple[str, int]]], str]
"""desired state and each engine model's (Service DNS name, port) -> the text of routes.json"""


def pods_service_name(model_id: str) -> str:
    return model_id + PODS_SUFFIX


def model_services(
    desired: DesiredState, namespace: str, kube: KubernetesSpec
) -> dict[str, tuple[str, int]]:
    """Each engine model -> the DNS name and port of its headless Service."""
    return {
        spec.id: (
            f"{pods_service_name(spec.id)}.{namespace}.svc.{CLUSTER_DOMAIN}",
            container_port(spec, kube),
        )
        for spec in desired.models.values()
        if not spec.is_remote
    }


def gateway_docs(
    desired: DesiredState, namespace: str, routes_file: RoutesFile
) -> list[dict[str, object]]:
    """Every object of the gateway: ConfigMap, Deployment, Service, then the models' headless
    Services by id."""
    kube = desired.cluster.kubernetes
    routes = routes_file(desired, model_services(desired, namespace, kube))
    engines = [desired.models[k] for k in sorted(desired.models) if not desired.models[k].is_remote]
    return [
        routes_config_map(routes, namespace),
        deployment(desired, namespace),
        service(kube, namespace),
        *(pods_service(spec, namespace, kube) for spec in engines),
    ]


def gateway_labels() -> dict[str, str]:
    return {**MANAGED_BY, "app.kubernetes.io/name": GATEWAY}


def routes_config_map(routes: str, namespace: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": ROUTES_CONFIGMAP, "namespace": namespace, "labels": gateway_labels()},
        "data": {ROUTES_KEY: routes},
    }


def secret_names(desired: DesiredState) -> list[str]:
    """The variables the gateway reads from the operator's Secret, sorted."""
    names = {key.key_env for key in desired.cluster.gateway.api_keys}
    for spec in desired.models.values():
        if spec.is_remote and spec.api_key_env:
            names |= {spec.api_key_env, hosts_variable(spec.api_key_env)}
    return sorted(names)


def deployment(desired: DesiredState, namespace: str) -> dict[str, object]:
    kube = desired.cluster.kubernetes
    config = kube.gateway
    secret = config.keys_secret
    env = [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": name}}}
        for name in secret_names(desired)
    ]
    probe = {"httpGet": {"path": "/healthz", "port": PORT_NAME}, "timeoutSeconds": 2}
    memory_mb = desired.cluster.gateway.max_buffered_mb + HEAD_ROOM_MB
    container: dict[str, object] = {
        "name": "gateway",
        "image": config.image,
        # the image's ENTRYPOINT is the gateway (deploy/Dockerfile); beyond loopback it serves
        # no request without gateway.api_keys, as `reconciler run` does
        "args": [
            "--routes",
            f"{ROUTES_DIR}/{ROUTES_KEY}",
            "--listen",
            f"0.0.0.0:{config.port}",
            "--require-keys",
        ],
        "ports": [{"name": PORT_NAME, "containerPort": config.port, "protocol": "TCP"}],
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
        "resources": {
            "requests": {"cpu": "500m", "memory": "256Mi"},
            "limits": {"memory": f"{memory_mb}Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "routes", "mountPath": ROUTES_DIR, "readOnly": True}],
    }
    if env:
        container["env"] = env
    template_labels = gateway_labels()
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": GATEWAY, "namespace": namespace, "labels": gateway_labels()},
        "spec": {
            "replicas": config.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": GATEWAY}},
            "template": {
                "metadata": {
                    "labels": template_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(config.port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    # a whole directory, not a subPath: the kubelet then updates routes.json in
                    # place when the ConfigMap changes, and the gateway reloads it
                    "volumes": [{"name": "routes", "configMap": {"name": ROUTES_CONFIGMAP}}],
                },
            },
        },
    }


def service(kube: KubernetesSpec, namespace: str) -> dict[str, object]:
    port = kube.gateway.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": GATEWAY, "namespace": namespace, "labels": gateway_labels()},
        "spec": {
            "type": kube.gateway.service_type,
            "selector": {"app.kubernetes.io/name": GATEWAY},
            "ports": [
                {"name": PORT_NAME, "port": port, "targetPort": PORT_NAME, "protocol": "TCP"}
            ],
        },
    }


def pods_service(spec: ModelSpec, namespace: str, kube: KubernetesSpec) -> dict[str, object]:
    """The model's headless Service: its DNS name resolves to the addresses of its ready pods
    (not-ready ones are left out), one instance each for the gateway."""
    port = container_port(spec, kube)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": pods_service_name(spec.id),
            "namespace": namespace,
            "labels": labels(spec),
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": False,
            "selector": {LABEL_MODEL: spec.id},
            "ports": [
                {"name": PORT_NAME, "port": port, "targetPort": PORT_NAME, "protocol": "TCP"}
            ],
        },
    }


def gateway_notes(desired: DesiredState) -> list[str]:
    """What the operator must do for the gateway to serve."""
    config = desired.cluster.kubernetes.gateway
    notes = []
    if config.image == GATEWAY_IMAGE_PLACEHOLDER:
        notes.append(
            f"gateway: image {config.image} is a placeholder: build deploy/Dockerfile, push it "
            "and set kubernetes.gateway.image in cluster.yaml"
        )
    if not desired.cluster.gateway.api_keys:
        notes.append(
            "gateway: no gateway.api_keys in cluster.yaml: beyond loopback the gateway refuses "
            "every request until keys are set"
        )
    needed = secret_names(desired)
    if needed:
        notes.append(
            f"gateway: create Secret {config.keys_secret} with {', '.join(needed)} (each "
            "_HOSTS lists the endpoint hosts its key may go to)"
        )
    return notes
