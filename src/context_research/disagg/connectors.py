"""vLLM KV connectors: ``--kv-transfer-config`` JSON, engine env and per-request parameters.

Field names follow vLLM's ``KVTransferConfig`` (``vllm/config/kv_transfer.py``): ``kv_connector``,
``kv_role`` (``kv_producer`` | ``kv_consumer`` | ``kv_both``), ``kv_port``,
``kv_connector_extra_config``; vLLM versions that still have ``kv_buffer_size`` use it for
P2pNcclConnector. The prefill engine is always the producer and the decode engine the consumer.

Request flow per connector (what the broker in front of the two pools must send):

- ``ExampleConnector`` (default; works on CPU and on one GPU): the producer serves the prompt
  with ``max_tokens=1`` and writes the KV of the prompt's first ``((n-1)//block)*block`` tokens
  to ``<shared_storage_path>/<md5 of those token ids>/<layer>.safetensors``; the consumer gets
  the SAME prompt, finds the folder (it looks up ``((n-2)//block)*block`` tokens) and loads it.
- ``NixlConnector`` (vLLM 0.26.0: an alias of ``NixlPullConnector``, the consumer READs the
  producer's KV) and ``NixlPushConnector`` (the producer WRITEs into the consumer's blocks once the
  consumer has registered them): the producer request carries
  ``kv_transfer_params.do_remote_decode=true``; its (non-streamed) response returns
  ``kv_transfer_params`` that the consumer request carries. Each engine needs its own
  ``VLLM_NIXL_SIDE_CHANNEL_PORT`` on a shared host. ``experiments.e3.ucx_env`` is added to both
  NIXL engines' environment (e.g. ``UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y``: the UCX of the
  ``nixl-cu13`` wheel turns CUDA-IPC reads off on a host without NVLink).
- ``P2pNcclConnector``: both requests carry the same ``request_id`` naming the producer's and the
  consumer's ZMQ addresses (``___prefill_addr_H:P___decode_addr_H:P_<uuid>``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .measuring_connector import LABEL_KEY, LEDGER_DIR_KEY

MEASURING_MODULE = "context_research.disagg.measuring_connector"
NIXL_CONNECTORS = ("NixlConnector", "NixlPullConnector", "NixlPushConnector")
CONNECTORS = ("ExampleConnector", *NIXL_CONNECTORS, "P2pNcclConnector")
# How the KV crosses from producer to consumer: the consumer READs (pulls) it, the producer
# WRITEs (pushes) it, or the producer stores files that the consumer loads.
DIRECTIONS = {"ExampleConnector": "files", "NixlConnector": "read", "NixlPullConnector": "read",
              "NixlPushConnector": "write"}
UCX_ENV_PREFIX = "UCX_"
ROLES = {"prefill": "kv_producer", "decode": "kv_consumer"}
# P2pNccl: the producer needs no receive buffer in PUT/PUT_ASYNC mode (vLLM's design doc).
P2P_PRODUCER_BUFFER_BYTES = 1e1


def is_nixl(connector: str) -> bool:
    return connector in NIXL_CONNECTORS


def transfer_direction(connector: str, cfg: dict[str, Any] | None = None) -> str | None:
    """``read`` (the consumer pulls), ``write`` (the producer pushes) or ``files`` (ExampleConnector:
    stored, then loaded); P2P NCCL by its send type; None for an unknown connector."""
    if connector == "P2pNcclConnector":
        return "read" if (cfg or {}).get("p2p_send_type", "PUT_ASYNC") == "GET" else "write"
    return DIRECTIONS.get(connector)


def ucx_env(cfg: dict[str, Any], key: str = "experiments.e3.ucx_env") -> dict[str, str]:
    """``cfg["ucx_env"]`` as strings, every name a UCX variable; ConfigError naming ``key`` otherwise."""
    env = cfg.get("ucx_env") or {}
    if not isinstance(env, dict):
        raise ConfigError(f"config key '{key}' must be a mapping of UCX variables, got {type(env).__name__}")
    bad = sorted(k for k in env if not str(k).startswith(UCX_ENV_PREFIX))
    if bad:
        raise ConfigError(f"config key '{key}': {', '.join(map(str, bad))} is not a UCX variable (names start "
                          f"with {UCX_ENV_PREFIX}); other engine variables go in serving.env")
    flags = sorted(k for k, v in env.items() if isinstance(v, bool) or not isinstance(v, (str, int)))
    if flags:
        raise ConfigError(f"config key '{key}': {', '.join(flags)} must be a string or a number (write \"y\" or "
                          f"\"n\" in quotes: unquoted yes/no is a YAML boolean, which UCX would not read)")
    if env and not is_nixl(cfg.get("connector", "")):
        raise ConfigError(f"config key '{key}' is set, but connector {cfg.get('connector')} does not move the KV "
                          f"through UCX (only {', '.join(NIXL_CONNECTORS)} do)")
    return {str(k): str(v) for k, v in env.items()}


def _role(pool: str) -> str:
    try:
        return ROLES[pool]
    except KeyError:
        raise ValueError(f"pool must be 'prefill' or 'decode', got {pool!r}") from None


def kv_transfer_config(connector: str, pool: str, cfg: dict[str, Any],
                       shared_storage_path: str | os.PathLike | None = None,
                       ledger_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``--kv-transfer-config`` object of the ``pool`` ("prefill" | "decode") engine.

    ``cfg`` is the E3 config block (keys ``kv_connector_extra_config``, ``p2p_kv_ports``,
    ``p2p_send_type``, ``p2p_kv_buffer_bytes``); config-level mistakes raise ConfigError. With a
    ``ledger_dir`` the engine loads the connector through ``measuring_connector`` (same name,
    timed per request, events written to that folder).
    """
    out = _plain_transfer_config(connector, pool, cfg, shared_storage_path)
    if ledger_dir is not None:
        out["kv_connector_module_path"] = MEASURING_MODULE
        out["kv_connector_extra_config"] = {**out["kv_connector_extra_config"], LEDGER_DIR_KEY: str(ledger_dir),
                                            LABEL_KEY: pool}
    return out


def _plain_transfer_config(connector: str, pool: str, cfg: dict[str, Any],
                           shared_storage_path: str | os.PathLike | None) -> dict[str, Any]:
    role = _role(pool)
    extra = dict(cfg.get("kv_connector_extra_config") or {})
    if connector == "ExampleConnector":
        if not shared_storage_path:
            raise ConfigError("experiments.e3.connector ExampleConnector needs a shared storage folder")
        extra["shared_storage_path"] = str(shared_storage_path)
        return {"kv_connector": connector, "kv_role": role, "kv_connector_extra_config": extra}
    if is_nixl(connector):
        return {"kv_connector": connector, "kv_role": role, "kv_connector_extra_config": extra}
    if connector == "P2pNcclConnector":
        ports = list(cfg.get("p2p_kv_ports") or [])
        if len(ports) != 2 or ports[0] == ports[1]:
            raise ConfigError("experiments.e3.p2p_kv_ports must be two different ports [prefill, decode]")
        send_type = cfg.get("p2p_send_type", "PUT_ASYNC")
        extra.setdefault("send_type", send_type)
        buffer = float(cfg.get("p2p_kv_buffer_bytes", 8e9))
        if pool == "prefill" and send_type != "GET":
            buffer = P2P_PRODUCER_BUFFER_BYTES
        return {"kv_connector": connector, "kv_role": role, "kv_port": int(ports[0 if pool == "prefill" else 1]),
                "kv_buffer_size": buffer, "kv_connector_extra_config": extra}
    raise ConfigError(f"config key 'experiments.e3.connector': {connector!r} is not one of {list(CONNECTORS)}")


def connector_env(connector: str, pool: str, cfg: dict[str, Any]) -> dict[str, str]:
    """Environment the engine process needs for the connector (none for ExampleConnector): for
    NIXL the side channel, ``UCX_PROTO_INFO`` and ``experiments.e3.ucx_env``."""
    _role(pool)
    extra = ucx_env(cfg, cfg.get("_ucx_env_key", "experiments.e3.ucx_env"))
    if is_nixl(connector):
        # Two engines on one host must not share a NIXL side-channel port. UCX_PROTO_INFO makes UCX
        # print the transport it selects, which transport.kv_transport reads from the engine log.
        port = int(cfg.get("nixl_side_channel_port", 5600)) + (0 if pool == "prefill" else 1)
        return {"VLLM_NIXL_SIDE_CHANNEL_HOST": connector_host(cfg), "VLLM_NIXL_SIDE_CHANNEL_PORT": str(port),
                "UCX_PROTO_INFO": "y", **extra}
    return extra


def connector_host(cfg: dict[str, Any]) -> str:
    """Address the connector's side channel binds to: config, else what vLLM's ``get_ip`` picks."""
    host = cfg.get("connector_host")
    if host:
        return str(host)
    host = os.environ.get("VLLM_HOST_IP")
    if host:
        return host
    import socket

    # vLLM's get_ip(): the source address of a UDP "connection" to a public address (no packet is sent).
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("8.8.8.8", 80))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def kv_transfer_args(transfer_config: dict[str, Any]) -> list[str]:
    """``vllm serve`` flags for a kv_transfer_config (compact JSON, one argv element)."""
    return ["--kv-transfer-config", json.dumps(transfer_config, sort_keys=True, separators=(",", ":"))]


def p2p_request_id(cfg: dict[str, Any], token: str | None = None) -> str:
    """The request id P2pNcclConnector parses the producer's and consumer's ZMQ addresses from."""
    host = connector_host(cfg)
    p_port, d_port = (int(p) for p in cfg["p2p_kv_ports"])
    return f"___prefill_addr_{host}:{p_port}___decode_addr_{host}:{d_port}_{token or uuid.uuid4().hex}"


NIXL_PRODUCER_PARAMS = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                        "remote_block_ids": None, "remote_host": None, "remote_port": None}


def producer_request_extra(connector: str, cfg: dict[str, Any], p2p_id: str | None = None) -> dict[str, Any]:
    """Fields the prefill (producer) request body carries besides the prompt."""
    if is_nixl(connector):
        return {"kv_transfer_params": dict(NIXL_PRODUCER_PARAMS)}
    if connector == "P2pNcclConnector":
        return {"request_id": p2p_id or p2p_request_id(cfg)}
    return {}


def consumer_request_extra(connector: str, producer_kv_params: dict[str, Any] | None,
                           p2p_id: str | None = None) -> dict[str, Any]:
    """Fields the decode (consumer) request body carries, given what the producer answered."""
    if is_nixl(connector):
        if not producer_kv_params:
            raise ValueError(f"{connector}: the producer's response carried no kv_transfer_params")
        return {"kv_transfer_params": producer_kv_params}
    if connector == "P2pNcclConnector":
        if not p2p_id:
            raise ValueError("P2pNcclConnector: the consumer request needs the producer's request id")
        return {"request_id": p2p_id}
    return {}


# -- what the installed vLLM supports -------------------------------------------------------
def _module_source(module: str) -> str | None:
    """Source text of a vLLM module without importing vLLM (find_spec of a submodule would)."""
    top, _, rest = module.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(list(spec.submodule_search_locations)[0]).joinpath(*rest.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8", errors="replace")
    return None


def installed_support(connector: str, transfer_config: dict[str, Any] | None = None) -> str | None:
    """None when the installed vLLM registers ``connector`` and knows every top-level field of
    ``transfer_config``; else the reason. Reads vLLM's source instead of importing it (an import
    costs seconds of torch start-up in the client process)."""
    factory = _module_source("vllm.distributed.kv_transfer.kv_connector.factory")
    if factory is None:
        return "vLLM is not installed (no vllm.distributed.kv_transfer.kv_connector.factory)"
    if not re.search(r'register_connector\(\s*"%s"' % re.escape(connector), factory):
        return f"the installed vLLM does not register the KV connector {connector!r}"
    fields_src = _module_source("vllm.config.kv_transfer") or ""
    known = set(re.findall(r"^    (\w+): ", fields_src, flags=re.M))
    unknown = sorted(k for k in (transfer_config or {}) if known and k not in known)
    if unknown:
        return (f"the installed vLLM's KVTransferConfig has no field(s) {', '.join(unknown)} "
                f"that {connector} needs")
    if is_nixl(connector) and not nixl_importable():
        return (f"{connector} needs the NIXL Python package (module 'nixl'), which this Python cannot import "
                f"(install nixl and its CUDA build, e.g. nixl-cu13, or put them on PYTHONPATH)")
    return None


def nixl_importable() -> bool:
    """Whether the engines can import NIXL: vLLM's own lightweight check (``find_spec('nixl')``,
    ``vllm.distributed.nixl_utils.is_nixl_available``), without importing it."""
    try:
        return importlib.util.find_spec("nixl") is not None
    except (ImportError, ValueError):
        return False


# -- ExampleConnector's shared folder -------------------------------------------------------
def shared_storage_root(cfg: dict[str, Any]) -> Path:
    """``experiments.e3.shared_storage_root``, else /dev/shm (RAM) when present, else the temp dir."""
    root = cfg.get("shared_storage_root")
    if root:
        path = Path(root)
        if not path.is_dir():
            raise ConfigError(f"config key 'experiments.e3.shared_storage_root': {root} is not a directory")
        return path
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def make_shared_storage(cfg: dict[str, Any], run_id: str) -> Path:
    """A fresh folder for this run's KV files (removed by ``remove_shared_storage``)."""
    return Path(tempfile.mkdtemp(prefix=f"context-research-e3-{run_id}-", dir=shared_storage_root(cfg)))


def remove_shared_storage(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
