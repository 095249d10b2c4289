"""`fopt analyze`: parse options, call `fopt.analyze.run.analyze`, print. No torch/onnx at import.

An entry point, not a layer: ``--device-spec cpu`` reads the bench's calibration of this machine
(`fopt.bench.costmodel.cache`), the one import here from a package above `fopt.analyze`.
"""

from __future__ import annotations

import click

from fopt.console import csv_option, json_option

LAYER_COLUMNS = ["name", "op_type", "kind", "output_shape", "macs", "flops", "bytes_read",
                 "bytes_written", "intensity", "estimate_us", "bound", "rf"]


def _si(value: float | int | None, unit: str = "") -> str:
    if value is None:
        return "-"
    value = float(value)
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def _ms(value: float) -> str:
    return f"{value * 1e3:.3g} us" if value < 0.1 else f"{value:.4g} ms"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}x"


def _mib(nbytes: int | float) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def _rf_text(rf: dict) -> str:
    if rf.get("conv_path_size") is None and not rf.get("global"):
        return "unknown"
    text = (f"{rf['size']} px" if not rf.get("global") else
            f"global (conv path {rf['conv_path_size']} px)")
    text += f", stride {rf['stride']}, padding {rf['padding']}"
    if rf.get("approximate"):
        text += f" [approximate: no rule for {', '.join(rf.get('no_rule', {}))}]"
    return text


def _layer_rf(rf: dict | None) -> str:
    if not rf:
        return "-"
    if rf.get("size") is None:
        return "global" if rf.get("global") else "-"
    return f"{rf['size']}{' +global' if rf.get('global') else ''}"


def _print_summary(d: dict) -> None:
    from fopt.console import console, print_table

    est = d["estimate"]
    rows = [
        ("target", f"{d['target']} ({d['kind']})"),
        ("input", f"{'x'.join(map(str, d['input_shape']))}, precision {d['precision']}"
                  f"{' (quantized graph)' if d['quantized'] else ''}"),
        ("params", f"{d['params']:,} ({_si(d['params'])})"),
        ("MACs", f"{d['macs']:,} ({_si(d['macs'])})"),
        ("FLOPs", f"{d['flops']:,} ({_si(d['flops'])}; 2 x MACs = {_si(2 * d['macs'])})"),
        ("weight bytes", _mib(d["weight_bytes"])),
        ("activation bytes", f"{_mib(d['activation_bytes'])} written; peak live {_mib(d['peak_activation_bytes'])}"),
        ("memory traffic", f"{_mib(d['bytes_read'])} read, {_mib(d['bytes_written'])} written"),
        ("nodes", f"{d['nodes']} ({d['nodes_executed']} executed)"),
        ("receptive field", _rf_text(d["receptive_field"])),
        (f"naive {d['device']['name']}", f"{_ms(est['naive_ms'])} (FLOPs / {d['precision']} peak)"),
        (f"roofline {d['device']['name']}",
         f"{_ms(est['roofline_ms'])} ({_ratio(est['roofline_over_naive'])} naive; "
         f"overhead {_ms(est['overhead_ms'])}; bound: {est['bound_counts']['compute']} compute, "
         f"{est['bound_counts']['memory']} memory nodes)"),
        ("status", d["status"]),
    ]
    if d["unsupported"]:
        rows.append(("unsupported", ", ".join(f"{k} x{v}" for k, v in d["unsupported"].items())))
    if d["missing_shapes"]:
        rows.append(("unknown shapes", ", ".join(f"{k} x{v}" for k, v in d["missing_shapes"].items())))
    if d["ignored"]:
        rows.append(("not counted", ", ".join(f"{k} x{v['count']}" for k, v in d["ignored"].items())))
    print_table([{"quantity": k, "value": v} for k, v in rows], title="fopt analyze")
    if d["status"] != "complete":
        console.print("status partial: totals are lower bounds (see unsupported / unknown shapes)",
                      markup=False)


def _short(name: str, width: int = 34) -> str:
    """'/features/features.2/features.2.0/block/block.0/Mul' -> 'features.2.0/block.0/Mul'."""
    parts = [p for p in name.strip("/").split("/") if p]
    kept = [p for i, p in enumerate(parts) if not (i + 1 < len(parts) and parts[i + 1].startswith(p))]
    text = "/".join(kept) or name
    return text if len(text) <= width else "…" + text[-(width - 1):]


def _print_layers(rows: list[dict], top: int) -> None:
    from fopt.console import print_table

    headers = {"op_type": "op", "output_shape": "output", "bytes_read": "read", "bytes_written": "written",
               "intensity": "FLOP/B", "estimate_us": "est us", "macs": "MACs", "flops": "FLOPs"}

    def table_rows(sel):
        return [{"name": _short(r["name"]), "op_type": r["op_type"], "kind": r["kind"],
                 "output_shape": "x".join(map(str, r["output_shape"] or [])) or "-",
                 "params": _si(r["params"]), "macs": _si(r["macs"]), "flops": _si(r["flops"]),
                 "bytes_read": _si(r["bytes_read"], "B"), "bytes_written": _si(r["bytes_written"], "B"),
                 "intensity": r["intensity"], "estimate_us": 1e3 * r["estimate_ms"], "bound": r["bound"],
                 "rf": _layer_rf(r.get("receptive_field"))} for r in sel]

    executed = [r for r in rows if r["executes"]]
    by_time = sorted(executed, key=lambda r: r["estimate_ms"], reverse=True)[:top]
    print_table(table_rows(by_time), LAYER_COLUMNS, headers=headers,
                title=f"top {len(by_time)} layers by estimated time")
    by_macs = sorted((r for r in rows if r["macs"]), key=lambda r: r["macs"], reverse=True)[:top]
    print_table(table_rows(by_macs), LAYER_COLUMNS, headers=headers, title=f"top {len(by_macs)} layers by MACs")


def _list_devices(json_path: str | None) -> None:
    from fopt.analyze.devices import device_rows
    from fopt.bench.costmodel.cache import CalibrationMissing, cpu_device_spec
    from fopt.console import note, print_table, write_json

    try:
        extra = [cpu_device_spec()]
    except CalibrationMissing:
        extra = []
    rows = device_rows(extra)
    print_table(rows, title="devices (dense peaks; cpu appears after `fopt bench --calibrate`)")
    if not any(r["name"] == "cpu" for r in rows):
        note("cpu: no calibration yet (run `fopt bench --calibrate`)")
    write_json(json_path, rows)


@click.command("analyze")
@click.argument("target", required=False)
@click.option("--img-size", type=int, help="Input size in px (default: the model's or checkpoint's own).")
@click.option("--num-classes", type=int, help="Classes of a registry model (default 1000 = torchvision's).")
@click.option("--batch", type=int, help="Batch size (default: the graph's static batch, else 1).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8"]), default="auto",
              show_default=True, help="Count at this precision; auto = the graph's own (int8 for QDQ files).")
@click.option("--device-spec", default="t4", show_default=True,
              help="Device for the estimate (see --list-devices; 'cpu' needs `fopt bench --calibrate`).")
@click.option("--per-layer", is_flag=True, help="Also print the top layers by estimated time and by MACs.")
@click.option("--top", type=int, default=15, show_default=True, help="Rows in the --per-layer tables.")
@click.option("--strict", is_flag=True, help="Fail if any op type cannot be counted (status partial).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a roofline chart (PNG/SVG/PDF).")
@click.option("--list-devices", is_flag=True, help="Print the device table and exit.")
@json_option
@csv_option
def analyze(target, img_size, num_classes, batch, precision, device_spec, per_layer, top, strict,
            plot_path, list_devices, json_path, csv_path):
    """Params, MACs, FLOPs, memory traffic, receptive field and a roofline latency estimate.

    TARGET is a registry model name (random weights; 1000 classes unless --num-classes), a fopt
    checkpoint or an ONNX file (QDQ INT8 files are counted at int8). Counting runs on the ONNX
    graph, one handler per op type; MACs are multiply-accumulates and FLOPs = 2 x MACs plus the
    element-wise work. The estimate is a per-node roofline, max(FLOPs/peak, bytes/bandwidth) plus a
    per-node overhead, printed beside the naive FLOPs/peak figure. --json writes every layer;
    --csv writes one row per layer.

    Example: fopt analyze efficientnet_b0 --img-size 256 --device-spec t4 --per-layer --plot roofline.png
    """
    from fopt.errors import UsageError

    if list_devices:
        _list_devices(json_path)
        return
    if not target:
        raise UsageError("missing TARGET (a registry model name, checkpoint or .onnx file); "
                         "or pass --list-devices")
    if top < 1:
        raise UsageError(f"--top must be >= 1, got {top}")
    from fopt.analyze.run import analyze as run_analysis
    from fopt.console import write_csv, write_json

    if device_spec.strip().lower() == "cpu":
        # the one device that is measured, not tabled: the bench's calibration of this machine
        from fopt.bench.costmodel.cache import cpu_device_spec

        device_spec = cpu_device_spec()
    result = run_analysis(target, img_size=img_size, num_classes=num_classes, batch=batch,
                          precision=None if precision == "auto" else precision,
                          device_spec=device_spec, strict=strict)
    d = result.to_dict()
    _print_summary(d)
    if per_layer:
        _print_layers(d["layers"], top)
    write_json(json_path, d)
    write_csv(csv_path, d["layers"])
    if plot_path:
        from fopt.analyze.roofline import plot_roofline
        from fopt.console import note

        plot_roofline(result.estimate, result.device, plot_path,
                      title=f"{d['target']} on {result.device.name} ({result.precision}, batch {result.batch}): "
                            f"roofline {result.estimate.roofline_ms:.3g} ms, naive {result.estimate.naive_ms:.3g} ms")
        note(f"wrote {plot_path}")
