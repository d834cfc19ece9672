"""The ways E3 moves the KV (``experiments.e3.kv_paths``): one engine pair per way, one aggregated
baseline for all of them.

A way ("KV path") is a connector with its settings: ``name``, ``connector``, ``ucx_env`` (UCX
variables of its NIXL engines) and ``kv_connector_extra_config`` (on top of the block's own). Without
``kv_paths`` the block's ``connector``, ``ucx_env`` and ``kv_connector_extra_config`` make the one
way, named after its connector. With ``kv_paths`` every way names its own connector and UCX
environment; a top-level ``ucx_env`` or non-default ``connector`` beside it is refused as
ambiguous.

Each way gets its own engine pair, started after the previous pair has stopped, with its own
NIXL side-channel ports (``nixl_side_channel_port + 2 x its index``), shared folder and ledger.
Engine starts: 1 (aggregated) + 2 per way.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import ConfigError
from . import connectors
from .ledger import read_events
from .phases import ENGINE_LOGS, log, pair_servings, run_disaggregated
from .transport import ISSUING_ENGINE, kv_transport

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
KEY = "experiments.e3"


@dataclass(frozen=True)
class KvPath:
    name: str
    connector: str
    index: int = 0
    ucx_env: dict[str, str] = field(default_factory=dict)
    extra_config: dict[str, Any] = field(default_factory=dict)
    key: str = KEY  # where the way is configured, for error messages

    def cfg(self, block: dict[str, Any]) -> dict[str, Any]:
        """The E3 block as this way's engines see it: its connector, UCX variables, extra config and
        side-channel ports."""
        port = int(block.get("nixl_side_channel_port", 5600)) + 2 * self.index
        return {**block, "connector": self.connector, "ucx_env": dict(self.ucx_env),
                "kv_connector_extra_config": dict(self.extra_config), "nixl_side_channel_port": port,
                "_ucx_env_key": f"{self.key}.ucx_env"}

    @property
    def direction(self) -> str | None:
        return connectors.transfer_direction(self.connector)

    def describe(self, block: dict[str, Any]) -> dict[str, Any]:
        """What run_metadata.json and summary.json record about the way."""
        return {"name": self.name, "connector": self.connector,
                "direction": connectors.transfer_direction(self.connector, self.cfg(block)),
                "ucx_env": dict(self.ucx_env), "kv_connector_extra_config": dict(self.extra_config)}

    def columns(self, block: dict[str, Any]) -> dict[str, Any]:
        """The columns every disaggregated row of this way carries."""
        return {"kv_path": self.name,
                "kv_transfer_direction": connectors.transfer_direction(self.connector, self.cfg(block)),
                "ucx_env": ucx_env_text(self.ucx_env)}


def ucx_env_text(env: dict[str, str]) -> str | None:
    """``K=V;K=V`` (sorted), None when empty: the ``ucx_env`` column."""
    return ";".join(f"{k}={v}" for k, v in sorted(env.items())) or None


def kv_paths(block: dict[str, Any]) -> list[KvPath]:
    """The validated ways of an E3 block, in order; ConfigError naming the key otherwise."""
    ways = block.get("kv_paths")
    if not ways:
        one = KvPath(name=block["connector"], connector=block["connector"], ucx_env=dict(block.get("ucx_env") or {}),
                     extra_config=dict(block.get("kv_connector_extra_config") or {}))
        return [_checked(one, block)]
    if block.get("ucx_env"):
        raise ConfigError(f"config key '{KEY}.ucx_env' is set beside '{KEY}.kv_paths': give each way its own ucx_env")
    if block.get("connector", "ExampleConnector") != "ExampleConnector":
        raise ConfigError(f"config key '{KEY}.connector' is set beside '{KEY}.kv_paths': each way names its own "
                          f"connector")
    out, seen = [], set()
    for i, way in enumerate(ways):
        key = f"{KEY}.kv_paths[{i}]"
        if not isinstance(way, dict) or not way.get("name") or not way.get("connector"):
            raise ConfigError(f"config key '{key}' needs a name and a connector")
        name = str(way["name"])
        if not NAME.match(name):
            raise ConfigError(f"config key '{key}.name': {name!r} must be lower-case letters, digits, '-' or '_' "
                              f"(it names engine log files)")
        if name in seen:
            raise ConfigError(f"config key '{key}.name': {name!r} names two ways")
        seen.add(name)
        extra = {**(block.get("kv_connector_extra_config") or {}), **(way.get("kv_connector_extra_config") or {})}
        out.append(_checked(KvPath(name=name, connector=str(way["connector"]), index=i,
                                   ucx_env=dict(way.get("ucx_env") or {}), extra_config=extra, key=key), block))
    last_port = int(block.get("nixl_side_channel_port", 5600)) + 2 * len(out) - 1
    if last_port > 65535:
        raise ConfigError(f"config key '{KEY}.nixl_side_channel_port': {len(out)} ways need ports up to {last_port}")
    return out


def _checked(path: KvPath, block: dict[str, Any]) -> KvPath:
    if path.connector not in connectors.CONNECTORS:
        raise ConfigError(f"config key '{path.key}.connector': {path.connector!r} is not one of "
                          f"{list(connectors.CONNECTORS)}")
    env = connectors.ucx_env(path.cfg(block), f"{path.key}.ucx_env")   # UCX names, strings, NIXL only
    return KvPath(path.name, path.connector, path.index, env, path.extra_config, path.key)


# -- one way, run: its engine pair, then what it left behind ------------------------------------------
@dataclass
class PathOutcome:
    path: KvPath
    outcome: Any                      # phases.ModeOutcome of the way's pair
    description: dict[str, Any]       # KvPath.describe
    servings: dict[str, dict[str, Any]]
    storage: Path | None
    events: list[dict[str, Any]]      # the way's ledger, each event stamped with kv_path
    transport: dict[str, Any]         # transport.kv_transport of the issuing engine's log


def engine_maker(run: Any, path: KvPath, several: bool) -> Callable[[dict, dict, str], Any]:
    """``new_engine`` for a way's pair: with one way its engines write the declared logs
    (engine_prefill.log, engine_decode.log); with several, ``engine_<pool>.<way>.log``."""
    pools = {key: pool for pool, key in ENGINE_LOGS.items()}

    def new_engine(model: dict[str, Any], serving: dict[str, Any], log_key: str) -> Any:
        if not several:
            return run.backend(model, serving, log_key)
        return run.backend(model, serving, "engine_kv_path", pools[log_key], path.name)

    return new_engine


def run_path(run: Any, path: KvPath, block: dict[str, Any], workload: Any, assignment: Any, budget: int,
             baselines: dict[int, float | None], *, several: bool, handoff_ids: Iterator[int],
             ceiling: dict[str, Any]) -> PathOutcome:
    """One way: a fresh shared folder (ExampleConnector) and ledger, its engine pair through the
    disaggregated phase (stopped before this returns), then its transport and link columns."""
    cfg, ctx = path.cfg(block), run.ctx
    storage: Path | None = None
    ledger_dir = Path(tempfile.mkdtemp(prefix=f"context-research-e3-ledger-{ctx.run_id}-{path.name}-"))
    try:
        if path.connector == "ExampleConnector":
            storage = connectors.make_shared_storage(cfg, ctx.run_id)
        servings = pair_servings(run.config, cfg, run.model, assignment, storage, ledger_dir)
        log(f"KV path {path.name}: {path.connector}{' ' + str(ucx_env_text(path.ucx_env)) if path.ucx_env else ''}")
        outcome = run_disaggregated(engine_maker(run, path, several), run.model, servings, cfg, workload, assignment,
                                    budget, storage, baselines, ledger_dir, columns=path.columns(block),
                                    handoff_ids=handoff_ids)
        events = [{**e, "kv_path": path.name} for e in read_events(ledger_dir)]
    finally:
        connectors.remove_shared_storage(storage)
        shutil.rmtree(ledger_dir, ignore_errors=True)
    direction = connectors.transfer_direction(path.connector, cfg)
    issuing = outcome.log_paths.get(ISSUING_ENGINE.get(direction, ""))
    transport = kv_transport(issuing.read_text(errors="replace") if issuing and issuing.exists() else "", direction)
    for row in outcome.rows:
        row.update(link_columns(row, transport, ceiling))
    if several:
        outcome.engines = {f"{pool}.{path.name}": info for pool, info in outcome.engines.items()}
    return PathOutcome(path=path, outcome=outcome, description=path.describe(block), servings=servings,
                       storage=storage, events=events, transport=transport)


def link_columns(row: dict[str, Any], transport: dict[str, Any], ceiling: dict[str, Any]) -> dict[str, Any]:
    """The transport that carried a way's KV and its load rate against the link ceiling."""
    gb_s = ceiling.get("gb_s") if ceiling.get("available") else None
    rate = row.get("kv_load_gb_s_derived_p50")
    return {"kv_transport": ", ".join(transport["transports"]) if transport.get("available") else None,
            "kv_transport_slow": transport.get("slower_than_host_allows") if transport.get("available") else None,
            "link_ceiling_gb_s": gb_s,
            "kv_load_share_of_ceiling": rate / gb_s if rate is not None and gb_s else None}
