"""ONNX Runtime runner (CPU provider; CUDA/TensorRT providers for --device cuda)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fopt.artifacts import ONNX_CARD_KEY, onnx_card_from_proto
from fopt.errors import DeviceUnavailable, InputError, MissingDependency
from fopt.runtime.base import RUNNERS, Runner


def embedded_card(path) -> dict[str, Any] | None:
    """The card stored in an ONNX file's metadata_props, if any (external weight files are not read)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise InputError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
    return onnx_card_from_proto(model)


@RUNNERS.register("onnx")
class OnnxRuntimeRunner(Runner):
    format = "onnx"
    backend = "onnxruntime"

    def _read_card(self) -> dict[str, Any]:
        from fopt.artifacts import read_card

        card = read_card(self.path, required=False) or embedded_card(self.path)
        if card is None:
            raise InputError(f"{self.path}: ONNX file has no fopt card (neither {self.path.name}.json "
                             f"beside it nor '{ONNX_CARD_KEY}' in its metadata_props)")
        return card

    def providers(self) -> list[str]:
        import onnxruntime as ort

        if self.device == "cpu":
            return ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise DeviceUnavailable("--device cuda needs onnxruntime-gpu (pip install fopt[gpu]); "
                                    f"this onnxruntime offers {', '.join(available)}")
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        # TensorRT EP first when present (it falls back to CUDA per node); tensorrt_provider=False
        # opts out, e.g. for short runs where its engine build would dominate.
        if self.options.get("tensorrt_provider", True) and "TensorrtExecutionProvider" in available:
            wanted.insert(0, "TensorrtExecutionProvider")
        return wanted

    def session_options(self):
        import onnxruntime as ort

        so = ort.SessionOptions()
        # Warnings only on error: ORT's graph-cleanup notices (e.g. unused initializers) are not
        # actionable for users and drown the progress output.
        so.log_severity_level = 3
        if self.threads:
            so.intra_op_num_threads = int(self.threads)
            so.inter_op_num_threads = 1
        if self.options.get("profile"):
            so.enable_profiling = True
            so.profile_file_prefix = str(self.options.get("profile_prefix", "ort_profile"))
        if self.options.get("optimized_model_path"):
            so.optimized_model_filepath = str(self.options["optimized_model_path"])
        return so

    def _load_impl(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependency("onnxruntime is not installed (pip install onnxruntime)") from None
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=self.session_options(),
                                                providers=self.providers())
        except (DeviceUnavailable, MissingDependency):
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InputError(f"{self.path}: onnxruntime cannot load it: {first}") from None
        active = self.session.get_providers()
        if self.device == "cuda" and "CUDAExecutionProvider" not in active:
            # onnxruntime silently falls back to the CPU when the CUDA libraries fail to load
            self.session = None
            raise DeviceUnavailable(f"--device cuda: onnxruntime could not start its CUDA provider "
                                    f"(active: {', '.join(active)}); check the CUDA/cuDNN libraries "
                                    f"onnxruntime-gpu needs")
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def _run_impl(self, prepared: np.ndarray):
        return self.session.run([self.output_name], {self.input_name: prepared})[0]

    def _close_impl(self) -> None:
        self.session = None
