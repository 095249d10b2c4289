"""A stand-in for the `tensorrt` module: records the build calls `onnx_to_engine` makes, and
returns what TensorRT 10/11's Python bindings return, failures included.

Its timing cache behaves like TensorRT's: a serialized cache names the TensorRT version and the
GPU it was made on. `create_timing_cache` returns None for bytes it cannot read (another
TensorRT version, or garbage); `set_timing_cache(cache, ignore_mismatch=False)` returns False for
another GPU's cache; `get_timing_cache()` returns None when no cache is attached (or, with
``lose_cache=True``, as a build that dropped it). An empty cache takes this GPU's name once a
build has timed tactics into it.
"""

from __future__ import annotations

import types
from pathlib import Path


def cache_bytes(version: str, gpu: str, entries: int = 1) -> bytes:
    """What this stand-in's `ITimingCache.serialize()` returns for a cache of `version`/`gpu`."""
    return f"timing-cache|trt={version}|gpu={gpu}|entries={entries}".encode()


class TrtStandIn:
    def __init__(self, version="10.8.0", gpu="Fake GPU", parse_ok=True, build_ok=True,
                 empty_cache_ok=True, lose_cache=False):
        self.calls: list[tuple] = []
        rec = self
        self.__version__ = version
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=1)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")

        class Logger:
            WARNING, VERBOSE = 2, 4

            def __init__(self, level=2):
                pass

        class Tensor:
            name, shape, dtype = "input", (-1, 3, 32, 32), "DataType.FLOAT"

        class Output:
            name, dtype = "logits", "DataType.FLOAT"

        class Network:
            num_inputs, num_outputs = 1, 1

            def get_input(self, i):
                return Tensor()

            def get_output(self, i):
                return Output()

        class Parser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                rec.calls.append(("parse", Path(path).name))
                return parse_ok

            def get_error(self, i):
                return types.SimpleNamespace(desc=lambda: "Unsupported ONNX op: QuickGelu")

        class Cache:
            def __init__(self, gpu, entries):
                self.gpu, self.entries = gpu, entries

            def serialize(self):
                return cache_bytes(version, self.gpu, self.entries)

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                rec.calls.append(("profile", name, lo, opt, hi))

        class Config:
            attached = None

            def set_memory_pool_limit(self, pool, size):
                rec.calls.append(("workspace", pool, size))

            def add_optimization_profile(self, p):
                rec.calls.append(("add_profile",))

            def create_timing_cache(self, data):
                data = bytes(data)
                rec.calls.append(("cache_in", data))
                if not data:
                    return Cache(None, 0) if empty_cache_ok else None
                fields = dict(f.split("=", 1) for f in data.decode(errors="replace").split("|")[1:]
                              if "=" in f)
                if not data.startswith(b"timing-cache|") or fields.get("trt") != version:
                    return None   # TensorRT logs an error and returns nullptr
                return Cache(fields.get("gpu"), int(fields.get("entries", 0)))

            def set_timing_cache(self, cache, ignore_mismatch):
                ok = cache.gpu in (None, gpu) or ignore_mismatch
                rec.calls.append(("set_cache", ignore_mismatch, ok))
                if ok:
                    self.attached = cache
                return ok

            def get_timing_cache(self):
                return None if lose_cache else self.attached

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                rec.calls.append(("network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                rec.calls.append(("build",))
                if config.attached is not None:  # the build times tactics into the attached cache
                    config.attached.gpu = gpu
                    config.attached.entries += 1
                return b"ENGINE" if build_ok else None

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, Parser
