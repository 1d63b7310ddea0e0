"""Prefect blocks: where things are, with their secrets. Register with `prefect block register -m blocks`."""

from blocks.app_state import AppStateTarget
from blocks.etcd import EtcdTarget
from blocks.kubernetes import KubernetesTarget, VeleroTarget
from blocks.monitoring import NotificationRouting, PushgatewayConfig
from blocks.pitr import PitrTarget
from blocks.postgres import PostgresTarget
from blocks.rabbitmq import RabbitMQTarget
from blocks.restore_guard import RestoreGuard
from blocks.store import LocalStore, S3Store, StoreBlock

__all__ = [
    "AppStateTarget",
    "EtcdTarget",
    "KubernetesTarget",
    "LocalStore",
    "NotificationRouting",
    "PitrTarget",
    "PostgresTarget",
    "PushgatewayConfig",
    "RabbitMQTarget",
    "RestoreGuard",
    "S3Store",
    "StoreBlock",
    "VeleroTarget",
]
