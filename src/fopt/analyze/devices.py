"""Device specifications for the roofline estimate: peak compute per precision, memory bandwidth.

Peaks are *dense* figures (no 2:4 structured sparsity): NVIDIA datasheets print the sparse
tensor-core number first, with an asterisk; the dense one is half of it. ``fp32`` is the CUDA-core
(non-tensor) FP32 rate, ``tf32`` the TF32 tensor-core rate (Ampere and later; none on Turing),
``fp16`` the FP16 tensor-core rate with FP32 accumulate where the sheet gives it, ``int8`` the INT8
tensor-core rate in OP/s (one multiply or one add = 1 op, like FLOPs). Memory bandwidth is the
HBM/GDDR figure of the named board. These are ceilings no real network reaches; the roofline uses
them as such.

FP32 convolutions and GEMMs do not run at the ``fp32`` peak where a ``tf32`` one exists: torch's
cuDNN convolutions, TensorRT's FP32 engines and ONNX Runtime's CUDA provider all use TF32 tensor
cores by default, so `DeviceSpec.mac_peak` prices FP32 MAC work at ``tf32``.

Boards of one name differ (H100 SXM, PCIe and NVL; A100 40 GB and 80 GB, SXM and PCIe): each
variant is its own entry, and `spec_for_gpu` maps the name a GPU reports to the entry of exactly
that variant, or to none (a MIG slice, or a name the table does not know) with the reason.

``node_overhead_s`` is not a datasheet number: it is a typical fixed cost per executed kernel
(launch plus scheduling, a few microseconds on a GPU without CUDA graphs). Measure it for your
stack before trusting small-batch estimates.

``cpu`` is this machine: its figures come from ``fopt bench --calibrate`` (micro-benchmarks of the
GEMM rate and memory bandwidth, cached per machine, `fopt.bench.costmodel.cache`), so it is not
in this table; callers that offer it pass its `DeviceSpec`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from fopt.errors import FoptError, UsageError
from fopt.registry import Registry

TFLOPS = 1e12
GBPS = 1e9
GPU_NODE_OVERHEAD_S = 5e-6   # typical kernel launch + scheduling gap without CUDA graphs


@dataclass(frozen=True)
class DeviceSpec:
    """One device's ceilings. Units: FLOP/s (OP/s for int8), bytes/s, seconds."""
    name: str
    peak_flops: Mapping[str, float]   # precision (fp32 | fp16 | int8) -> FLOP/s
    bandwidth_bytes_per_s: float
    node_overhead_s: float
    source: str
    description: str = ""

    def peak(self, precision: str) -> float:
        """Peak rate at `precision`; a precision the device lacks falls back to the next wider one."""
        for p in {"int8": ("int8", "fp16", "fp32"), "fp16": ("fp16", "fp32"), "tf32": ("tf32", "fp32"),
                  "fp32": ("fp32",)}.get(precision, (precision,)):
            value = self.peak_flops.get(p)
            if value:
                return float(value)
        raise UsageError(f"device {self.name!r} has no peak for {precision}")

    def mac_peak(self, precision: str) -> float:
        """The rate of convolutions and GEMMs at `precision`: FP32 ones run on TF32 tensor cores
        where the device has them (the default of cuDNN, TensorRT and ONNX Runtime's CUDA provider)."""
        return self.peak("tf32" if precision == "fp32" else precision)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["peak_flops"] = dict(self.peak_flops)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DeviceSpec":
        try:
            return cls(name=str(d["name"]), peak_flops={k: float(v) for k, v in d["peak_flops"].items()},
                       bandwidth_bytes_per_s=float(d["bandwidth_bytes_per_s"]),
                       node_overhead_s=float(d["node_overhead_s"]), source=str(d.get("source", "")),
                       description=str(d.get("description", "")))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise FoptError(f"malformed device spec ({type(e).__name__}: {e})") from None


DEVICES: Registry[DeviceSpec] = Registry("device")
# Table name -> the token sets of GPU names (as torch/nvidia-smi report them) meaning exactly it.
GPU_NAMES: dict[str, tuple[frozenset[str], ...]] = {}


def _add(spec: DeviceSpec, *names: str) -> None:
    """Register `spec`; each of `names` is a space-separated set of tokens a reported name must hold."""
    DEVICES.add(spec.name, spec)
    GPU_NAMES[spec.name] = tuple(frozenset(n.split()) for n in names)


_add(DeviceSpec(
    "t4",
    peak_flops={"fp32": 8.1 * TFLOPS,    # NVIDIA T4 datasheet: "Single-Precision 8.1 TFLOPS"
                "fp16": 65 * TFLOPS,     # T4 datasheet: "Mixed-Precision (FP16/FP32) 65 TFLOPS"
                "int8": 130 * TFLOPS},   # T4 datasheet: "INT8 130 TOPS" (Turing: no TF32)
    bandwidth_bytes_per_s=320 * GBPS,    # T4 datasheet: "GPU Memory Bandwidth 320+ GB/s"
    node_overhead_s=GPU_NODE_OVERHEAD_S,
    source="NVIDIA T4 Tensor Core GPU datasheet", description="Turing, 70 W, 16 GB GDDR6"),
    "t4")

_add(DeviceSpec(
    "l4",
    peak_flops={"fp32": 30.3 * TFLOPS,   # NVIDIA L4 datasheet: "FP32 30.3 teraFLOPs"
                "tf32": 60 * TFLOPS,     # L4 datasheet: "TF32 Tensor Core 120 teraFLOPS*" (*sparse) / 2
                "fp16": 121 * TFLOPS,    # L4 datasheet: "FP16 Tensor Core 242 teraFLOPS*" (*sparse) / 2
                "int8": 242.5 * TFLOPS},  # L4 datasheet: "INT8 Tensor Core 485 TOPs*" (*sparse) / 2
    bandwidth_bytes_per_s=300 * GBPS,    # L4 datasheet: "GPU Memory Bandwidth 300 GB/s"
    node_overhead_s=GPU_NODE_OVERHEAD_S,
    source="NVIDIA L4 Tensor Core GPU datasheet", description="Ada, 72 W, 24 GB GDDR6"),
    "l4")

_add(DeviceSpec(
    "a10",
    peak_flops={"fp32": 31.2 * TFLOPS,   # NVIDIA A10 datasheet: "FP32 31.2 teraFLOPS"
                "tf32": 62.5 * TFLOPS,   # A10 datasheet: "TF32 Tensor Core 62.5 teraFLOPS | 125*"
                "fp16": 125 * TFLOPS,    # A10 datasheet: "FP16 Tensor Core 125 teraFLOPS | 250*"
                "int8": 250 * TFLOPS},   # A10 datasheet: "INT8 Tensor Core 250 TOPS | 500*"
    bandwidth_bytes_per_s=600 * GBPS,    # A10 datasheet: "GPU Memory Bandwidth 600 GB/s"
    node_overhead_s=GPU_NODE_OVERHEAD_S,
    source="NVIDIA A10 Tensor Core GPU datasheet", description="Ampere, 150 W, 24 GB GDDR6"),
    "a10")

A100_PEAKS = {"fp32": 19.5 * TFLOPS,    # NVIDIA A100 datasheet: "FP32 19.5 TFLOPS" (every form factor)
              "tf32": 156 * TFLOPS,     # A100 datasheet: "Tensor Float 32 (TF32) 156 TFLOPS | 312*"
              "fp16": 312 * TFLOPS,     # A100 datasheet: "FP16 Tensor Core 312 TFLOPS | 624*"
              "int8": 624 * TFLOPS}     # A100 datasheet: "INT8 Tensor Core 624 TOPS | 1248*"

_add(DeviceSpec(
    "a100",
    peak_flops=A100_PEAKS,               # A100 datasheet: one set of peaks for SXM and PCIe, 40 and 80 GB
    bandwidth_bytes_per_s=2039 * GBPS,   # A100 datasheet, 80GB SXM: "GPU Memory Bandwidth 2,039 GB/s"
    node_overhead_s=GPU_NODE_OVERHEAD_S,  # not a datasheet figure: a typical launch gap
    source="NVIDIA A100 Tensor Core GPU datasheet (80GB SXM)", description="Ampere, 80 GB HBM2e, SXM"),
    "a100 sxm4 80gb")   # torch reports "NVIDIA A100-SXM4-80GB"

_add(DeviceSpec(
    "a100-40gb",
    peak_flops=A100_PEAKS,               # A100 datasheet: one set of peaks for SXM and PCIe, 40 and 80 GB
    bandwidth_bytes_per_s=1555 * GBPS,   # A100 datasheet, 40GB SXM: "GPU Memory Bandwidth 1,555 GB/s"
    node_overhead_s=GPU_NODE_OVERHEAD_S,  # not a datasheet figure: a typical launch gap
    source="NVIDIA A100 Tensor Core GPU datasheet (40GB SXM)", description="Ampere, 40 GB HBM2, SXM"),
    "a100 sxm4 40gb")   # torch reports "NVIDIA A100-SXM4-40GB"

_add(DeviceSpec(
    "a100-pcie-40gb",
    peak_flops=A100_PEAKS,               # A100 datasheet: one set of peaks for SXM and PCIe, 40 and 80 GB
    bandwidth_bytes_per_s=1555 * GBPS,   # A100 datasheet, 40GB PCIe: "GPU Memory Bandwidth 1,555 GB/s"
    node_overhead_s=GPU_NODE_OVERHEAD_S,  # not a datasheet figure: a typical launch gap
    source="NVIDIA A100 Tensor Core GPU datasheet (40GB PCIe)", description="Ampere, 40 GB HBM2, PCIe"),
    "a100 pcie 40gb")   # torch reports "NVIDIA A100-PCIE-40GB"

_add(DeviceSpec(
    "a100-pcie-80gb",
    peak_flops=A100_PEAKS,               # A100 datasheet: one set of peaks for SXM and PCIe, 40 and 80 GB
    bandwidth_bytes_per_s=1935 * GBPS,   # A100 datasheet, 80GB PCIe: "GPU Memory Bandwidth 1,935 GB/s"
    node_overhead_s=GPU_NODE_OVERHEAD_S,  # not a datasheet figure: a typical launch gap
    source="NVIDIA A100 Tensor Core GPU datasheet (80GB PCIe)", description="Ampere, 80 GB HBM2e, PCIe"),
    "a100 pcie 80gb")   # torch reports "NVIDIA A100 80GB PCIe"

_add(DeviceSpec(
    "h100",
    peak_flops={"fp32": 67 * TFLOPS,     # NVIDIA H100 datasheet, SXM: "FP32 67 teraFLOPS"
                "tf32": 494.5 * TFLOPS,  # H100 SXM: "TF32 Tensor Core 989 teraFLOPS*" (*sparse) / 2
                "fp16": 989.5 * TFLOPS,  # H100 SXM: "FP16 Tensor Core 1,979 teraFLOPS*" (*sparse) / 2
                "int8": 1979 * TFLOPS},  # H100 SXM: "INT8 Tensor Core 3,958 TOPS*" (*sparse) / 2
    bandwidth_bytes_per_s=3350 * GBPS,   # H100 SXM: "GPU Memory Bandwidth 3.35TB/s"
    node_overhead_s=GPU_NODE_OVERHEAD_S,
    source="NVIDIA H100 Tensor Core GPU datasheet (SXM)", description="Hopper, 80 GB HBM3, SXM"),
    "h100 hbm3", "h100 sxm5", "h100 sxm")

_add(DeviceSpec(
    "h100-pcie",
    peak_flops={"fp32": 51 * TFLOPS,     # NVIDIA H100 datasheet, PCIe: "FP32 51 teraFLOPS"
                "tf32": 378 * TFLOPS,    # H100 PCIe: "TF32 Tensor Core 756 teraFLOPS*" (*sparse) / 2
                "fp16": 756.5 * TFLOPS,  # H100 PCIe: "FP16 Tensor Core 1,513 teraFLOPS*" (*sparse) / 2
                "int8": 1513 * TFLOPS},  # H100 PCIe: "INT8 Tensor Core 3,026 TOPS*" (*sparse) / 2
    bandwidth_bytes_per_s=2000 * GBPS,   # H100 PCIe: "GPU Memory Bandwidth 2TB/s"
    node_overhead_s=GPU_NODE_OVERHEAD_S,
    source="NVIDIA H100 Tensor Core GPU datasheet (PCIe)", description="Hopper, 80 GB HBM2e, PCIe"),
    "h100 pcie")

_add(DeviceSpec(
    "h100-nvl",
    peak_flops={"fp32": 60 * TFLOPS,     # NVIDIA H100 datasheet, NVL: "FP32 60 teraFLOPS"
                "tf32": 417.5 * TFLOPS,  # H100 NVL: "TF32 Tensor Core 835 teraFLOPS*" (*sparse) / 2
                "fp16": 835.5 * TFLOPS,  # H100 NVL: "FP16 Tensor Core 1,671 teraFLOPS*" (*sparse) / 2
                "int8": 1670.5 * TFLOPS},  # H100 NVL: "INT8 Tensor Core 3,341 TOPS*" (*sparse) / 2
    bandwidth_bytes_per_s=3900 * GBPS,   # H100 NVL: "GPU Memory Bandwidth 3.9TB/s"
    node_overhead_s=GPU_NODE_OVERHEAD_S,
    source="NVIDIA H100 Tensor Core GPU datasheet (NVL)", description="Hopper, 94 GB HBM3, PCIe"),
    "h100 nvl")

_add(DeviceSpec(
    "h200",
    peak_flops={"fp32": 67 * TFLOPS,     # NVIDIA H200 datasheet, SXM: "FP32 67 TFLOPS"
                "tf32": 494.5 * TFLOPS,  # H200 SXM: "TF32 Tensor Core 989 TFLOPS*" (*sparse) / 2
                "fp16": 989.5 * TFLOPS,  # H200 SXM: "FP16 Tensor Core 1,979 TFLOPS*" (*sparse) / 2
                "int8": 1979 * TFLOPS},  # H200 SXM: "INT8 Tensor Core 3,958 TOPS*" (*sparse) / 2
    bandwidth_bytes_per_s=4800 * GBPS,   # H200 SXM: "GPU Memory Bandwidth 4.8TB/s"
    node_overhead_s=GPU_NODE_OVERHEAD_S,
    source="NVIDIA H200 Tensor Core GPU datasheet (SXM)", description="Hopper, 141 GB HBM3e, SXM"),
    "h200")   # the SXM board reports itself as plain "NVIDIA H200"

_add(DeviceSpec(
    "h200-nvl",
    peak_flops={"fp32": 60 * TFLOPS,     # NVIDIA H200 datasheet, NVL: "FP32 60 TFLOPS"
                "tf32": 417.5 * TFLOPS,  # H200 NVL: "TF32 Tensor Core 835 TFLOPS*" (*sparse) / 2
                "fp16": 835.5 * TFLOPS,  # H200 NVL: "FP16 Tensor Core 1,671 TFLOPS*" (*sparse) / 2
                "int8": 1670.5 * TFLOPS},  # H200 NVL: "INT8 Tensor Core 3,341 TOPS*" (*sparse) / 2
    bandwidth_bytes_per_s=4800 * GBPS,   # H200 NVL: "GPU Memory Bandwidth 4.8TB/s"
    node_overhead_s=GPU_NODE_OVERHEAD_S,
    source="NVIDIA H200 Tensor Core GPU datasheet (NVL)", description="Hopper, 141 GB HBM3e, PCIe"),
    "h200 nvl")

# Most specific first: "h200 nvl" must win over plain "h200".
_MATCH_ORDER = sorted(GPU_NAMES, key=lambda n: -max((len(t) for t in GPU_NAMES[n]), default=0))


def spec_for_gpu(gpu_name: str) -> tuple[DeviceSpec | None, str | None]:
    """(the table entry of exactly this GPU variant, None), or (None, why none matched).

    `gpu_name` is what torch (``get_device_properties().name``) or nvidia-smi report, e.g.
    "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-40GB", "Tesla T4". A MIG slice ("... MIG 1g.10gb") has
    a share of the board's SMs and bandwidth, so no datasheet entry describes it."""
    tokens = set(re.findall(r"[a-z0-9]+", str(gpu_name).lower()))
    if "mig" in tokens:
        return None, (f"GPU {gpu_name!r} is a MIG slice (a share of the board's compute and "
                      f"bandwidth): no datasheet entry fits it")
    for name in _MATCH_ORDER:
        if any(t <= tokens for t in GPU_NAMES[name]):
            return DEVICES.get(name), None
    return None, (f"GPU {gpu_name!r} matches no variant in the device table "
                  f"({', '.join(DEVICES.names())})")


def get_device_spec(name: "str | DeviceSpec") -> DeviceSpec:
    """A device by table name (case-insensitive); a `DeviceSpec` is returned as it is.

    ``cpu`` is not in the table: it is this machine as measured by `fopt bench --calibrate`
    (`fopt.bench.costmodel.cache.cpu_device_spec`), passed in as a `DeviceSpec`."""
    if isinstance(name, DeviceSpec):
        return name
    key = str(name).strip().lower()
    if key == "cpu":
        raise UsageError("device 'cpu' is this machine's calibration: pass its DeviceSpec "
                         "(fopt.bench.costmodel.cache.cpu_device_spec())")
    return DEVICES.get(key)


def device_rows(extra: Iterable[DeviceSpec] = ()) -> list[dict[str, Any]]:
    """The device table for `fopt analyze --list-devices`, plus `extra` devices (a calibrated cpu)."""
    rows = []
    for spec in [*(spec for _, spec in DEVICES.items()), *extra]:
        rows.append({"name": spec.name,
                     "fp32_tflops": spec.peak_flops.get("fp32", 0) / TFLOPS,
                     "tf32_tflops": spec.peak_flops.get("tf32", 0) / TFLOPS,
                     "fp16_tflops": spec.peak_flops.get("fp16", 0) / TFLOPS,
                     "int8_tops": spec.peak_flops.get("int8", 0) / TFLOPS,
                     "bandwidth_gb_s": spec.bandwidth_bytes_per_s / GBPS,
                     "node_overhead_us": spec.node_overhead_s * 1e6,
                     "source": spec.source})
    return rows
