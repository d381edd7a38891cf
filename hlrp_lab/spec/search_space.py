"""The spec's ``search`` block: ``dotted.spec.path__sampler`` keys, checked without Ray, applied to a spec.

A component's ``name`` can be searched (``model.quantizer.name__choice``); a searched key of that component
is applied only where the sampled class declares it, and the block keeps only the keys its class declares.
"""

from dataclasses import dataclass
from numbers import Real
from typing import Any

import pydash

from hlrp_lab.data.sources import DATA_SOURCES
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.registry import Registry
from hlrp_lab.stages import STAGES

# ray.tune's samplers with their required and optional arguments, in order. A static table, so that a spec is
# checked without importing Ray (seconds); tests/test_search.py derives the same table from the signatures of
# every public function of ray.tune.search.sample, so a new sampler or a changed argument fails there.
SAMPLERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "uniform": (("lower", "upper"), ()),
    "quniform": (("lower", "upper", "q"), ()),
    "loguniform": (("lower", "upper"), ("base",)),
    "qloguniform": (("lower", "upper", "q"), ("base",)),
    "randn": ((), ("mean", "sd")),
    "qrandn": (("mean", "sd", "q"), ()),
    "randint": (("lower", "upper"), ()),
    "qrandint": (("lower", "upper"), ("q",)),
    "lograndint": (("lower", "upper"), ("base",)),
    "qlograndint": (("lower", "upper", "q"), ("base",)),
    "choice": (("categories",), ()),
    "grid_search": (("values",), ()),
}
LIST_SAMPLERS = ("choice", "grid_search")  # the spec value is the list of values; Tune samples an index
LOG_SAMPLERS = ("loguniform", "qloguniform", "lograndint", "qlograndint")
INT_SAMPLERS = ("randint", "qrandint", "lograndint", "qlograndint")
NOT_WITH_OPTUNA = ("randn", "qrandn", "grid_search")


@dataclass(frozen=True)
class SearchKey:
    """One ``search`` entry: the spec path it sets, the ray.tune sampler and the sampler's arguments."""

    path: str
    sampler: str
    args: tuple[Any, ...]

    @property
    def key(self) -> str:
        """The entry as written in the spec, for error messages."""
        return f"search.{self.path}__{self.sampler}"

    def domain(self) -> Any:
        """The ray.tune domain (imports Ray); list samplers draw the index of a value."""
        from ray import tune

        if self.sampler in LIST_SAMPLERS:
            return getattr(tune, self.sampler)(list(range(len(self.args))))
        return getattr(tune, self.sampler)(*self.args)

    def decode(self, sampled: Any) -> Any:
        """The spec value of what Tune sampled (a plain Python value, not a numpy scalar)."""
        if self.sampler in LIST_SAMPLERS:
            return self.args[int(sampled)]
        return sampled.item() if hasattr(sampled, "item") else sampled


def parse_search(search: dict[str, Any]) -> list[SearchKey]:
    """The ``search`` block as SearchKeys; an unknown sampler or wrong arguments name the key."""
    keys = []
    for entry, args in search.items():
        path, sep, sampler = entry.rpartition("__")
        key = f"search.{entry}"
        if not sep or not path:
            raise SpecError(f"{key}: expected dotted.spec.path__sampler, e.g. optim.lr__loguniform")
        if sampler not in SAMPLERS:
            raise SpecError(f"{key}: unknown sampler {sampler!r}; ray.tune has: {', '.join(SAMPLERS)}")
        keys.append(SearchKey(path, sampler, tuple(check_args(key, sampler, args))))
    paths = [k.path for k in keys]
    for search_key in keys:
        if paths.count(search_key.path) > 1:
            raise SpecError(f"{search_key.key}: {search_key.path} is searched more than once")
    return keys


def check_args(key: str, sampler: str, args: Any) -> list[Any]:
    required, optional = SAMPLERS[sampler]
    if sampler in LIST_SAMPLERS:
        if not isinstance(args, list) or not args:
            raise SpecError(f"{key}: expected a non-empty list of values")
        return args
    names = ", ".join(required + tuple(f"{name}=?" for name in optional))
    if not isinstance(args, list) or not len(required) <= len(args) <= len(required) + len(optional):
        raise SpecError(f"{key}: expected a list of arguments [{names}], got {args!r}")
    if not all(isinstance(a, Real) and not isinstance(a, bool) for a in args):
        raise SpecError(f"{key}: arguments [{names}] must be numbers, got {args!r}")
    if sampler in INT_SAMPLERS and not all(isinstance(a, int) for a in args[: len(required)]):
        raise SpecError(f"{key}: arguments [{names}] must be integers, got {args!r}")
    if required[:2] == ("lower", "upper") and not args[0] < args[1]:
        raise SpecError(f"{key}: lower must be less than upper, got {args!r}")
    if sampler in LOG_SAMPLERS and args[0] <= 0:
        raise SpecError(f"{key}: a log sampler needs lower > 0, got {args!r}")
    return args


def component_blocks(spec: dict) -> dict[str, Registry]:
    """The spec paths of the blocks built by name (``model.<family>``, ``data.source``) and their registry."""
    families = STAGES.config_class(spec["stage"], "stage").families
    blocks = {f"model.{family}": registry for family, registry in families.items()}
    if spec["data"]["source"] is not None:
        blocks["data.source"] = DATA_SOURCES
    return blocks


def owning_block(path: str, blocks: dict[str, Registry]) -> str | None:
    """The component block that ``path`` is a key of (not the block itself), if any."""
    return next((block for block in blocks if path.startswith(f"{block}.")), None)


def check_search_mode(spec: dict, spec_name: str, mode: str) -> None:
    """A search needs a ``search`` block to sample trials from."""
    if mode == "search" and not spec["search"]:
        raise SpecError(
            f"search: spec {spec_name!r} has no search block to sample trials from; see docs/SEARCH.md"
        )


def check_search(spec: dict) -> None:
    """Check the ``search`` block of a checked spec: samplers, arguments and paths, naming the bad key."""
    keys = parse_search(spec["search"])
    if spec["meta"]["search_algorithm"] == "optuna":
        for search_key in keys:
            if search_key.sampler in NOT_WITH_OPTUNA:
                raise SpecError(
                    f"{search_key.key}: Optuna cannot sample {search_key.sampler}; "
                    'use another sampler or meta.search_algorithm "random"'
                )
    blocks = component_blocks(spec)
    sampled_names = {k.path.removesuffix(".name"): k for k in keys if k.path.endswith(".name")}
    for search_key in sorted(keys, key=lambda k: not k.path.endswith(".name")):  # names first
        check_path(spec, search_key, blocks, sampled_names)


def check_path(
    spec: dict, search_key: SearchKey, blocks: dict[str, Registry], sampled_names: dict[str, SearchKey]
) -> None:
    path, key = search_key.path, search_key.key
    if path.startswith("meta."):
        raise SpecError(f"{key}: meta keys run the search and cannot be searched")
    block = owning_block(path, blocks)
    if block is None:
        if not pydash.has(spec, path):
            raise SpecError(f"{key}: {path} is not a key of this spec; see docs/SPECS.md")
        return
    registry, field = blocks[block], path[len(block) + 1 :].split(".")[0]
    if field == "name":
        if search_key.sampler not in LIST_SAMPLERS:
            raise SpecError(f"{key}: a component name is searched with choice or grid_search")
        for name in search_key.args:
            registry.config_class(name, key)
        return
    names = [pydash.get(spec, f"{block}.name")]
    if block in sampled_names:
        names += [name for name in sampled_names[block].args if name not in names]
    if not any(field in config_fields(registry, name, block) for name in names):
        raise SpecError(f"{key}: no {registry.family} of {', '.join(names)} has the key {field!r}")


def apply_sample(spec: dict, values: dict[str, Any]) -> tuple[dict, dict[str, Any]]:
    """``spec`` without its search block and with the sampled ``values`` (by path) set.

    Returns the new spec and the values it took: a key that the sampled component lacks is left out.
    Parents and component names are set before the keys under them.
    """
    trial = pydash.clone_deep(pydash.omit(spec, "search"))
    blocks = component_blocks(trial)
    applied = {}
    for path in sorted(values, key=lambda p: (p.count("."), not p.endswith(".name"))):
        block = owning_block(path, blocks)
        if block is not None and path == f"{block}.name":
            keep = config_fields(blocks[block], values[path], block)
            old = pydash.get(trial, block)
            pydash.set_(trial, block, {k: v for k, v in old.items() if k in keep})
        elif block is not None:
            block_name = pydash.get(trial, f"{block}.name")
            if path[len(block) + 1 :].split(".")[0] not in config_fields(blocks[block], block_name, block):
                continue
        pydash.set_(trial, path, values[path])
        applied[path] = values[path]
    return trial, applied


def config_fields(registry: Registry, name: str, block: str) -> set[str]:
    return set(registry.config_class(name, f"{block}.name").model_fields)


def trial_spec(spec: dict, keys: list[SearchKey], config: dict[str, Any], index: int) -> tuple[dict, dict]:
    """Trial ``index`` of a search: ``spec`` with what Tune sampled (``config``) applied, unchecked; and the
    values it took (see ``apply_sample``)."""
    trial, applied = apply_sample(spec, {key.path: key.decode(config[key.path]) for key in keys})
    trial["meta"]["trial"] = index
    return trial, applied


def search_metric(spec: dict) -> tuple[str, str] | None:
    """A spec's ``meta.search_metric`` as (name, mode); None where it has none (a saved spec may lack meta)."""
    meta = spec.get("meta")
    chosen = meta.get("search_metric") if isinstance(meta, dict) else None
    return (str(chosen.get("name")), str(chosen.get("mode"))) if isinstance(chosen, dict) else None
